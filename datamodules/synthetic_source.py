"""The generative source of the synthetic corpus: lexicon, distributions and sampling.

The source (:class:`HierarchicalSource`) emits a character stream with the hierarchy
characters -> words -> sentences (phrases) -> topics::

    kygrt kviat tzut bknt tzut.jrhts iaqls hxwqs rfs.dgesq bknq phq gtq bknq.ieaq wxq ybq wxq.

Generative process (``K`` topics, ``W`` stems per topic, ``M`` agreement markers), sentence by
sentence, ``n = 1, 2, ...``:

1. Topic ``Z_n``: ``Z_1 ~ pi`` (uniform, the stationary law); then ``Z_n = Z_{n-1}`` with
   probability ``1 - s`` and otherwise one of the other ``K - 1`` topics uniformly.
2. Marker ``A_n`` uniform on ``{0..M-1}``, the sentence's agreement marker.
3. Length ``L_n`` (number of words) uniform on ``[min_words, max_words]``.
4. Words ``R_{n,1..L_n}`` i.i.d. stem ranks with Zipf probabilities ``p(r) ~ (r + 1) ** -a``; word
   ``j`` is written ``stems[Z_n][R_{n,j}] + markers[A_n]`` (the marker is a suffix of *every*
   word of the sentence: agreement).
5. The sentence is its words joined by ' ' and followed by '.'; sentences are concatenated
   directly (no space after '.').

The lexicon (stems: random letter strings, all distinct across topics; markers: distinct letter
strings of one fixed length) is drawn once from ``config.seed``. ``Z_n`` and ``A_n`` are the
information above the word level: ``A_n`` persists across the words of a sentence, ``Z_n`` across
sentences (mean run of ``1 / s`` sentences).

Boundaries (:class:`SyntheticText`): ``word_end[t]`` iff ``text[t]`` is the last letter of a word
(the next character is ' ' or '.'); ``phrase_end[t]`` iff ``text[t]`` is the '.' ending a
sentence. Every unit thus ends at its own last character (a sentence's last character is its '.'),
so the '.' is *not* a word end and the ' ' belongs to no word.

The exact entropy rate and reference rates of this source are derived and computed in
:mod:`datamodules.synthetic_exact`. Drawing 2M characters takes ~0.07 s.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from datamodules.synthetic_config import PHRASE_END, WORD_SEP, SyntheticConfig
from datamodules.synthetic_exact import ExactPredictor, SourceMeasures

__all__ = ["HierarchicalSource", "SyntheticText", "make_splits"]

_LEXICON_STREAM = 0  # spawn_key of the seed sequence that draws the lexicon
_SAMPLE_STREAM = 1  # spawn_key prefix of the seed sequences that draw text samples
_CHUNK_SENTENCES = 1024  # sentences drawn per vectorised chunk (fixed => prefix-consistent)


@dataclass(frozen=True, eq=False)
class SyntheticText:
    """A sample of the source together with its latent structure (all arrays have len(text))."""

    text: str
    """The character stream; it starts at the start of a sentence."""
    word_end: np.ndarray = field(repr=False)
    """bool: ``text[t]`` is the last letter of a word (the next character is ' ' or '.')."""
    phrase_end: np.ndarray = field(repr=False)
    """bool: ``text[t]`` is the '.' that ends a sentence (the last character of the sentence)."""
    topic: np.ndarray = field(repr=False)
    """int8: topic of the sentence that ``text[t]`` belongs to (its '.' included)."""
    marker: np.ndarray = field(repr=False)
    """int8: agreement marker of the sentence that ``text[t]`` belongs to."""

    def __len__(self) -> int:
        return len(self.text)


class _Chunk(NamedTuple):
    """``_CHUNK_SENTENCES`` sentences of a sample, as drawn by :meth:`HierarchicalSource.sample`.

    A piece is one word with the separator after it (' ' or the sentence's '.').
    """

    text: str
    ends: np.ndarray  # (words,) int64: stream position just after each piece
    is_last: np.ndarray  # (words,) bool: the word ends its sentence (its piece ends with '.')
    topic: np.ndarray  # (chars,) int8: topic of every character of the chunk
    marker: np.ndarray  # (chars,) int8: agreement marker of every character of the chunk


def _draw_lexicon(config: SyntheticConfig) -> tuple[list[tuple[str, ...]], list[str]]:
    """The stems (``W`` distinct per topic, distinct across topics) and the distinct markers,
    drawn from ``config.seed`` (stems first, then markers, from one generator)."""
    rng = np.random.default_rng(np.random.SeedSequence(config.seed, spawn_key=(_LEXICON_STREAM,)))
    letters = np.array(list(config.letters))

    def draw(length: int) -> str:
        return "".join(letters[rng.integers(0, len(letters), length)].tolist())

    seen: set[str] = set()
    stems: list[tuple[str, ...]] = []
    for _ in range(config.num_topics):
        topic: list[str] = []
        while len(topic) < config.words_per_topic:
            stem = draw(int(rng.integers(config.min_stem_length, config.max_stem_length + 1)))
            if stem not in seen:
                seen.add(stem)
                topic.append(stem)
        stems.append(tuple(topic))
    markers: list[str] = []
    while len(markers) < config.num_markers:
        marker = draw(config.marker_length)
        if marker not in markers:
            markers.append(marker)
    return stems, markers


class HierarchicalSource(SourceMeasures):
    """The stochastic source described in :mod:`datamodules.synthetic_source`, with the exact
    information measures of :class:`~datamodules.synthetic_exact.SourceMeasures`.

    Attributes:
        config: the parameters.
        alphabet: every symbol the source can emit, sorted (' ' < '.' < letters).
        stems: ``stems[z][r]`` is the stem of rank ``r`` of topic ``z`` (all distinct).
        markers: ``markers[a]`` is the suffix of agreement marker ``a`` (all distinct).
        word_probs: ``(W,)`` probability of stem rank ``r`` within any topic.
        transition: ``(K, K)`` topic transition matrix between consecutive sentences.
        stationary: ``(K,)`` stationary topic distribution (uniform), that of the first sentence.
        length_probs: ``(max_words + 1,)`` probability of the number of words of a sentence.
    """

    def __init__(self, config: SyntheticConfig | None = None) -> None:
        self.config = config = config if config is not None else SyntheticConfig()
        stems, markers = _draw_lexicon(config)
        self.stems: tuple[tuple[str, ...], ...] = tuple(stems)
        self.markers: tuple[str, ...] = tuple(markers)
        self.alphabet: str = "".join(sorted(set(config.letters) | {WORD_SEP, PHRASE_END}))
        self._set_distributions()

        # Surface word forms: id = (z * W + r) * M + a  ->  stems[z][r] + markers[a].
        k, w, m = config.num_topics, config.words_per_topic, config.num_markers
        self._surfaces = [
            stems[z][r] + markers[a] for z in range(k) for r in range(w) for a in range(m)
        ]
        self._surface_len = np.array([len(x) for x in self._surfaces], dtype=np.int64)
        self._surface_pieces = np.array(
            [x + sep for x in self._surfaces for sep in (WORD_SEP, PHRASE_END)], dtype=object
        )
        self._predictor = ExactPredictor(self, self._surfaces)

    def _set_distributions(self) -> None:
        """``word_probs`` (Zipf), ``transition`` and ``stationary`` (topics), ``length_probs``."""
        cfg = self.config
        k, w = cfg.num_topics, cfg.words_per_topic
        weights = np.arange(1, w + 1, dtype=np.float64) ** -cfg.zipf_exponent
        self.word_probs: np.ndarray = weights / weights.sum()
        s = cfg.switch_prob
        self.transition: np.ndarray = (
            np.full((k, k), s / (k - 1)) if k > 1 else np.zeros((1, 1), dtype=np.float64)
        )
        np.fill_diagonal(self.transition, 1.0 - s)
        self.stationary: np.ndarray = np.full(k, 1.0 / k)
        self.length_probs: np.ndarray = np.zeros(cfg.max_words + 1)
        self.length_probs[cfg.min_words :] = 1.0 / (cfg.max_words - cfg.min_words + 1)

    def sample(self, num_chars: int, seed: int = 0) -> SyntheticText:
        """Draw ``num_chars`` characters, starting at a sentence start with a stationary topic.

        The stream depends on ``(config.seed, seed)`` only, and a shorter sample with the same
        seed is a prefix of a longer one. The last sentence is usually cut; the boundary flags of
        the kept characters are those of the uncut stream.
        """
        if num_chars < 0 or seed < 0:
            raise ValueError("num_chars and seed must be >= 0")
        rng = np.random.default_rng(
            np.random.SeedSequence(self.config.seed, spawn_key=(_SAMPLE_STREAM, seed))
        )
        chunks: list[_Chunk] = []
        total = 0
        z_prev = -1  # topic of the previous sentence; -1 at the stream start
        while total < num_chars:
            topic, marker, length = self._draw_sentences(rng, z_prev)
            z_prev = int(topic[-1])
            chunks.append(self._draw_words(rng, topic, marker, length, total))
            total = int(chunks[-1].ends[-1])
        return self._assemble(chunks, total, num_chars)

    def _draw_sentences(
        self, rng: np.random.Generator, z_prev: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Topic, marker and word count of the next ``_CHUNK_SENTENCES`` sentences, each ``(C,)``.

        ``z_prev < 0`` starts the stream: the first topic is then stationary (uniform).
        """
        cfg, c = self.config, _CHUNK_SENTENCES
        k, m = cfg.num_topics, cfg.num_markers
        switch = rng.random(c) < cfg.switch_prob
        offset = rng.integers(1, k, c) if k > 1 else np.zeros(c, dtype=np.int64)
        marker = rng.integers(0, m, c)
        length = rng.integers(cfg.min_words, cfg.max_words + 1, c)
        steps = np.where(switch, offset, 0)
        if z_prev < 0:  # first sentence of the stream: stationary (uniform) topic
            steps[0] = rng.integers(0, k)
            z_prev = 0
        topic = (z_prev + np.cumsum(steps)) % k
        return topic, marker, length

    def _draw_words(
        self,
        rng: np.random.Generator,
        topic: np.ndarray,
        marker: np.ndarray,
        length: np.ndarray,
        start: int,
    ) -> _Chunk:
        """The words of sentences with these latents, written out from stream position
        ``start``."""
        w, m = self.config.words_per_topic, self.config.num_markers
        n_words = int(length.sum())
        cdf = np.cumsum(self.word_probs)
        rank = np.minimum(np.searchsorted(cdf, rng.random(n_words), side="right"), w - 1)
        z_word = np.repeat(topic, length)
        a_word = np.repeat(marker, length)
        is_last = np.zeros(n_words, dtype=bool)
        is_last[np.cumsum(length) - 1] = True
        surface = (z_word * w + rank) * m + a_word
        piece_len = self._surface_len[surface] + 1
        return _Chunk(
            text="".join(self._surface_pieces[2 * surface + is_last]),
            ends=start + np.cumsum(piece_len),
            is_last=is_last,
            topic=np.repeat(z_word, piece_len).astype(np.int8),
            marker=np.repeat(a_word, piece_len).astype(np.int8),
        )

    @staticmethod
    def _assemble(chunks: list[_Chunk], total: int, num_chars: int) -> SyntheticText:
        """The first ``num_chars`` of the ``total`` characters drawn, with their boundary flags."""
        text = "".join(chunk.text for chunk in chunks)[:num_chars]
        word_end = np.zeros(total, dtype=bool)
        phrase_end = np.zeros(total, dtype=bool)
        if chunks:
            sep = np.concatenate([chunk.ends for chunk in chunks]) - 1
            word_end[sep - 1] = True
            phrase_end[sep[np.concatenate([chunk.is_last for chunk in chunks])]] = True
        empty = np.zeros(0, dtype=np.int8)
        return SyntheticText(
            text=text,
            word_end=word_end[:num_chars],
            phrase_end=phrase_end[:num_chars],
            topic=np.concatenate([c.topic for c in chunks])[:num_chars] if chunks else empty,
            marker=np.concatenate([c.marker for c in chunks])[:num_chars] if chunks else empty,
        )


def make_splits(
    config: SyntheticConfig, train_chars: int, valid_chars: int, test_chars: int
) -> dict[str, SyntheticText]:
    """Independent samples of one source for 'train', 'valid' and 'test' (sample seeds 0, 1, 2)."""
    source = HierarchicalSource(config)
    sizes = {"train": train_chars, "valid": valid_chars, "test": test_chars}
    return {name: source.sample(n, seed=i) for i, (name, n) in enumerate(sizes.items())}
