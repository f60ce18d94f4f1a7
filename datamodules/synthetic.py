"""Synthetic character corpus with a known hierarchy and an exactly computable entropy rate.

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

Entropy rate (exact)
--------------------
Decodability: since stems are distinct and markers have a fixed length, the surface form
``stem + marker`` determines ``(topic, stem, marker)``. Words contain neither ' ' nor '.', so a
sentence string determines ``Y_n = (Z_n, A_n, L_n, R_{n,1..L_n})`` and vice versa (an injective
code), and the set of sentence strings is prefix-free (each ends at its only '.'). Hence the
stream parses uniquely into sentences and ``p(x_1..x_{C_N}) = p(Y_1..Y_N)`` where ``C_N`` is the
number of characters of the first ``N`` sentences.

``(Y_n)`` is a stationary Markov chain (``Z`` Markov with stationary start; given ``Z_n``,
everything else is drawn independently), ergodic when ``s > 0`` or ``K = 1``, so by the chain
rule and Shannon-McMillan-Breiman ``-log2 p(Y_1..Y_N) / N -> h_sent`` almost surely, with

    h_sent = H(Y_n | Y_{n-1}) = H(Z'|Z) + H(A) + H(L) + E[L] * H(R)
    H(Z'|Z) = h2(s) + s * log2(K - 1),   H(A) = log2 M,   H(L) = log2(max - min + 1)

(``E[L] * H(R)`` by Wald's identity, ``L`` being independent of the i.i.d. words). By the ergodic
theorem ``C_N / N -> E[C]``, the expected characters of one sentence:

    E[C] = E[L] * (E_pi[word length] + 1)      (L - 1 spaces + one '.' = L separators)

For ``C_N <= T < C_{N+1}``: ``p(x_1..x_T) = p(Y_1..Y_N) * p(prefix of sentence N+1 | Y_N)``, and
``0 <= -log2 p(prefix | Y_N) <= -log2 p(Y_{N+1} | Y_N) = o(N)`` a.s. So the renewal-reward
argument gives, almost surely and (by uniform integrability) for ``H(X_1..X_T) / T``:

    entropy rate = lim -log2 p(x_1..x_T) / T = h_sent / E[C]   bits per character.

:meth:`HierarchicalSource.neg_log2_prob` returns the exact ``-log2 p(x_t | x_<t)`` (sum over the
stems and latents consistent with the prefix, via a trie with prefix masses), so its mean over a
long sample converges to this closed form: that is the main correctness test.

Reference rates, also exact (cross-entropies of restricted optimal predictors on this source):

* topic forgetting: the predictor restarts every sentence from ``pi`` (no information across
  sentences): ``(h_sent - H(Z'|Z) + H(pi)) / E[C]``.
* independent words: words i.i.d. from their marginal (no topic, no marker memory; the word count
  of the sentence is still known): ``(H(L) + E[L] * (log2 K + log2 M + H(R))) / E[C]``.

Defaults (``SyntheticConfig()``, seed 0): alphabet of 28 symbols (a-z, ' ', '.'), K = 8 topics x
W = 24 stems of 2-4 letters, Zipf exponent 0.5 (``H(R)`` = 4.4267 bits), M = 3 one-letter
markers, 2-6 words per sentence (``E[L]`` = 4), switch probability 0.1
(``H(Z'|Z)`` = 0.7497 bits):

=================================  =======================
mean word length (with marker)     4.020 letters
mean sentence length               20.080 characters
sentence entropy ``h_sent``        22.363 bits
entropy rate                       1.1137 bits/char
topic-forgetting rate              1.2258 bits/char (+0.112, +10 %)
independent-words rate             1.9108 bits/char
unigram (2M train, 300k test)      4.449 bits/char
=================================  =======================

Drawing 2M characters takes ~0.07 s; exact ``neg_log2_prob`` on 200k characters ~0.12 s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from datamodules.stream import CharStreamDataModule, Vocabulary
from hmrnn.config import DataConfig

__all__ = [
    "PHRASE_END",
    "WORD_SEP",
    "HierarchicalSource",
    "SyntheticConfig",
    "SyntheticText",
    "make_splits",
    "unigram_bpc",
]

WORD_SEP = " "
"""Separator between two words of the same sentence."""
PHRASE_END = "."
"""Delimiter that ends every sentence (it is the last character of the sentence)."""

_LEXICON_STREAM = 0  # spawn_key of the seed sequence that draws the lexicon
_SAMPLE_STREAM = 1  # spawn_key prefix of the seed sequences that draw text samples
_CHUNK_SENTENCES = 1024  # sentences drawn per vectorised chunk (fixed => prefix-consistent)


@dataclass(frozen=True)
class SyntheticConfig:
    """Parameters of :class:`HierarchicalSource` (all of them; nothing else is random)."""

    seed: int = 0
    """Seed of the lexicon (stems and markers). Text samples take their own seed on top of it."""
    num_topics: int = 8
    """Number of topics ``K``; each topic owns a disjoint set of word stems."""
    words_per_topic: int = 24
    """Number of stems ``W`` per topic."""
    min_stem_length: int = 2
    """Shortest stem, in letters."""
    max_stem_length: int = 4
    """Longest stem, in letters (lengths are drawn uniformly on ``[min, max]``)."""
    zipf_exponent: float = 0.5
    """Stem ``r`` (0-based rank) of a topic has probability proportional to ``(r + 1) ** -a``."""
    num_markers: int = 3
    """Number of agreement markers ``M``; one is drawn uniformly per sentence."""
    marker_length: int = 1
    """Letters per marker; the marker is appended as a suffix to every word of the sentence."""
    switch_prob: float = 0.1
    """Probability that a sentence changes topic (to one of the other ``K - 1``, uniformly)."""
    min_words: int = 2
    """Fewest words per sentence (the count is uniform on ``[min_words, max_words]``)."""
    max_words: int = 6
    """Most words per sentence."""
    letters: str = "abcdefghijklmnopqrstuvwxyz"
    """Letters that stems and markers are drawn from (uniformly); must not contain ' ' or '.'."""

    def __post_init__(self) -> None:
        if self.seed < 0:
            raise ValueError("seed must be >= 0")
        if not (1 <= self.num_topics <= 127 and 1 <= self.num_markers <= 127):
            raise ValueError("num_topics and num_markers must be in [1, 127] (stored as int8)")
        if self.words_per_topic < 1:
            raise ValueError("words_per_topic must be >= 1")
        if not 1 <= self.min_stem_length <= self.max_stem_length:
            raise ValueError("need 1 <= min_stem_length <= max_stem_length")
        if self.marker_length < 0:
            raise ValueError("marker_length must be >= 0")
        if self.marker_length == 0 and self.num_markers > 1:
            raise ValueError("marker_length == 0 allows only num_markers == 1")
        if not 1 <= self.min_words <= self.max_words:
            raise ValueError("need 1 <= min_words <= max_words")
        if not 0.0 <= self.switch_prob <= 1.0 or (self.num_topics == 1 and self.switch_prob > 0):
            raise ValueError("switch_prob must be in [0, 1], and 0 when num_topics == 1")
        if self.zipf_exponent < 0:
            raise ValueError("zipf_exponent must be >= 0")
        letters = set(self.letters)
        if len(letters) != len(self.letters) or not letters or letters & {WORD_SEP, PHRASE_END}:
            raise ValueError("letters must be distinct and must not contain ' ' or '.'")
        n = len(self.letters)
        capacity = sum(n**k for k in range(self.min_stem_length, self.max_stem_length + 1))
        if capacity < 2 * self.num_topics * self.words_per_topic:
            raise ValueError("too few distinct stems of the allowed lengths for the lexicon")
        if n**self.marker_length < self.num_markers:
            raise ValueError("too few distinct markers of length marker_length")


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


class HierarchicalSource:
    """The stochastic source described in the module docstring, with exact information measures.

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
        k, w, m = config.num_topics, config.words_per_topic, config.num_markers
        rng = np.random.default_rng(
            np.random.SeedSequence(config.seed, spawn_key=(_LEXICON_STREAM,))
        )
        letters = np.array(list(config.letters))

        def draw(length: int) -> str:
            return "".join(letters[rng.integers(0, len(letters), length)].tolist())

        seen: set[str] = set()
        stems: list[tuple[str, ...]] = []
        for _ in range(k):
            topic: list[str] = []
            while len(topic) < w:
                stem = draw(int(rng.integers(config.min_stem_length, config.max_stem_length + 1)))
                if stem not in seen:
                    seen.add(stem)
                    topic.append(stem)
            stems.append(tuple(topic))
        self.stems: tuple[tuple[str, ...], ...] = tuple(stems)
        markers: list[str] = []
        while len(markers) < m:
            marker = draw(config.marker_length)
            if marker not in markers:
                markers.append(marker)
        self.markers: tuple[str, ...] = tuple(markers)

        self.alphabet: str = "".join(sorted(set(config.letters) | {WORD_SEP, PHRASE_END}))
        weights = np.arange(1, w + 1, dtype=np.float64) ** -config.zipf_exponent
        self.word_probs: np.ndarray = weights / weights.sum()
        s = config.switch_prob
        self.transition: np.ndarray = (
            np.full((k, k), s / (k - 1)) if k > 1 else np.zeros((1, 1), dtype=np.float64)
        )
        np.fill_diagonal(self.transition, 1.0 - s)
        self.stationary: np.ndarray = np.full(k, 1.0 / k)
        self.length_probs: np.ndarray = np.zeros(config.max_words + 1)
        self.length_probs[config.min_words :] = 1.0 / (config.max_words - config.min_words + 1)

        # Surface word forms: id = (z * W + r) * M + a  ->  stems[z][r] + markers[a].
        self._surfaces = [
            stems[z][r] + markers[a] for z in range(k) for r in range(w) for a in range(m)
        ]
        self._surface_len = np.array([len(x) for x in self._surfaces], dtype=np.int64)
        self._surface_pieces = np.array(
            [x + sep for x in self._surfaces for sep in (WORD_SEP, PHRASE_END)], dtype=object
        )
        self._build_trie()

    # ------------------------------------------------------------------ exact information measures

    def _topic_word_entropy(self) -> float:
        """Entropy (bits) of the stem of one word given its topic (the same for every topic)."""
        p = self.word_probs
        return float(-(p * np.log2(p)).sum())

    @staticmethod
    def _entropy(p: np.ndarray) -> float:
        p = p[p > 0]
        return float(-(p * np.log2(p)).sum())

    def mean_words_per_sentence(self) -> float:
        """E[L], the expected number of words of a sentence."""
        return float((np.arange(len(self.length_probs)) * self.length_probs).sum())

    def mean_word_length(self) -> float:
        """Expected letters of a word (stem + marker) at stationarity (separator not counted)."""
        stem_len = np.array([[len(x) for x in topic] for topic in self.stems], dtype=np.float64)
        return float(self.stationary @ stem_len @ self.word_probs) + self.config.marker_length

    def mean_sentence_length(self) -> float:
        """Expected characters of a sentence: E[L] * (mean word length + 1), the +1 being the
        separator after each word (L - 1 spaces and the final '.')."""
        return self.mean_words_per_sentence() * (self.mean_word_length() + 1.0)

    def sentence_entropy(self) -> float:
        """h_sent: E_stationary[H(sentence | topic of the previous sentence)], in bits.

        ``H(Z'|Z) + H(A) + H(L) + E[L] * H(W|Z)`` (see the module docstring).
        """
        h_topic = float(self.stationary @ [self._entropy(row) for row in self.transition])
        return (
            h_topic
            + math.log2(self.config.num_markers)
            + self._entropy(self.length_probs)
            + self.mean_words_per_sentence() * self._topic_word_entropy()
        )

    def entropy_rate(self) -> float:
        """Exact entropy rate of the character stream in bits per character:
        ``sentence_entropy() / mean_sentence_length()``."""
        return self.sentence_entropy() / self.mean_sentence_length()

    def topic_forgetting_rate(self) -> float:
        """Exact cross-entropy rate (bits/char) of the best predictor that forgets the topic at
        every sentence end (it starts each sentence from the stationary topic distribution).

        It is what :meth:`neg_log2_prob` with ``forget_topic=True`` averages to; the gap to
        :meth:`entropy_rate` is ``I(Z_n; Z_{n-1}) / E[chars per sentence]``, what information
        carried across sentences is worth.
        """
        h_topic = float(self.stationary @ [self._entropy(row) for row in self.transition])
        gap = self._entropy(self.stationary) - h_topic
        return (self.sentence_entropy() + gap) / self.mean_sentence_length()

    def independent_words_rate(self) -> float:
        """Exact cross-entropy rate (bits/char) of the best predictor with no memory above the word
        except the word count of the sentence: words i.i.d. from their marginal distribution
        (topic and marker redrawn for every word), sentence lengths from ``length_probs``."""
        per_word = (
            self._entropy(self.stationary)
            + math.log2(self.config.num_markers)
            + self._topic_word_entropy()
        )
        bits = self._entropy(self.length_probs) + self.mean_words_per_sentence() * per_word
        return bits / self.mean_sentence_length()

    def stats(self) -> dict[str, float]:
        """Every exact summary number of the source (rates in bits per character)."""
        return {
            "entropy_rate": self.entropy_rate(),
            "topic_forgetting_rate": self.topic_forgetting_rate(),
            "independent_words_rate": self.independent_words_rate(),
            "sentence_entropy_bits": self.sentence_entropy(),
            "mean_word_length": self.mean_word_length(),
            "mean_words_per_sentence": self.mean_words_per_sentence(),
            "mean_sentence_length": self.mean_sentence_length(),
        }

    # ------------------------------------------------------------------------------ sampling

    def sample(self, num_chars: int, seed: int = 0) -> SyntheticText:
        """Draw ``num_chars`` characters, starting at a sentence start with a stationary topic.

        The stream depends on ``(config.seed, seed)`` only, and a shorter sample with the same
        seed is a prefix of a longer one. The last sentence is usually cut; the boundary flags of
        the kept characters are those of the uncut stream.
        """
        if num_chars < 0 or seed < 0:
            raise ValueError("num_chars and seed must be >= 0")
        cfg = self.config
        k, w, m = cfg.num_topics, cfg.words_per_topic, cfg.num_markers
        rng = np.random.default_rng(
            np.random.SeedSequence(cfg.seed, spawn_key=(_SAMPLE_STREAM, seed))
        )
        cdf = np.cumsum(self.word_probs)
        c = _CHUNK_SENTENCES
        pieces: list[str] = []
        ends: list[np.ndarray] = []
        lasts: list[np.ndarray] = []
        topics: list[np.ndarray] = []
        marks: list[np.ndarray] = []
        total = 0
        z_prev = -1
        while total < num_chars:
            switch = rng.random(c) < cfg.switch_prob
            offset = rng.integers(1, k, c) if k > 1 else np.zeros(c, dtype=np.int64)
            marker = rng.integers(0, m, c)
            length = rng.integers(cfg.min_words, cfg.max_words + 1, c)
            steps = np.where(switch, offset, 0)
            if z_prev < 0:  # first sentence of the stream: stationary (uniform) topic
                steps[0] = rng.integers(0, k)
                z_prev = 0
            topic = (z_prev + np.cumsum(steps)) % k
            z_prev = int(topic[-1])
            n_words = int(length.sum())
            rank = np.minimum(np.searchsorted(cdf, rng.random(n_words), side="right"), w - 1)
            z_word = np.repeat(topic, length)
            a_word = np.repeat(marker, length)
            is_last = np.zeros(n_words, dtype=bool)
            is_last[np.cumsum(length) - 1] = True
            surface = (z_word * w + rank) * m + a_word
            pieces.append("".join(self._surface_pieces[2 * surface + is_last]))
            piece_len = self._surface_len[surface] + 1
            ends.append(total + np.cumsum(piece_len))
            lasts.append(is_last)
            topics.append(np.repeat(z_word, piece_len).astype(np.int8))
            marks.append(np.repeat(a_word, piece_len).astype(np.int8))
            total = int(ends[-1][-1])
        text = "".join(pieces)[:num_chars]
        word_end = np.zeros(total, dtype=bool)
        phrase_end = np.zeros(total, dtype=bool)
        if ends:
            sep = np.concatenate(ends) - 1
            word_end[sep - 1] = True
            phrase_end[sep[np.concatenate(lasts)]] = True
        empty = np.zeros(0, dtype=np.int8)
        return SyntheticText(
            text=text,
            word_end=word_end[:num_chars],
            phrase_end=phrase_end[:num_chars],
            topic=np.concatenate(topics)[:num_chars] if topics else empty,
            marker=np.concatenate(marks)[:num_chars] if marks else empty,
        )

    # ------------------------------------------------------------------ exact probabilities

    def _build_trie(self) -> None:
        """One character trie over all surface forms, with a prefix-mass table per context.

        Context ``z < K``: first word of a sentence after a sentence of topic ``z``
        (weights ``T[z, z'] * 1/M * p(r)``); ``K``: first word under the stationary prior
        (``pi(z') / M * p(r)``); ``K + 1 + z * M + a``: a later word of a sentence whose topic and
        marker, decoded from its first word, are ``(z, a)`` (weights ``p(r)`` on those forms only).
        ``mass[c][n]`` is the total weight of forms through node ``n``, ``term[c][n]`` that of the
        form ending at ``n``; ``term_za[n]`` is the ``(topic, marker)`` of that form (unique).
        """
        k, w, m = self.config.num_topics, self.config.words_per_topic, self.config.num_markers
        children: list[dict[str, int]] = [{}]
        term_za: list[tuple[int, int] | None] = [None]
        path_nodes: list[int] = []
        path_owner: list[int] = []
        leaf = np.zeros(len(self._surfaces), dtype=np.int64)
        for sid, form in enumerate(self._surfaces):
            node = 0
            path_nodes.append(0)
            path_owner.append(sid)
            for ch in form:
                nxt = children[node].get(ch)
                if nxt is None:
                    nxt = len(children)
                    children[node][ch] = nxt
                    children.append({})
                    term_za.append(None)
                node = nxt
                path_nodes.append(node)
                path_owner.append(sid)
            if term_za[node] is not None:  # impossible: stems distinct, markers of fixed length
                raise AssertionError(f"surface form {form!r} is not unique")
            leaf[sid] = node
            term_za[node] = (sid // m // w, sid % m)
        sid_topic = np.arange(len(self._surfaces)) // m // w
        sid_rank = np.arange(len(self._surfaces)) // m % w
        sid_marker = np.arange(len(self._surfaces)) % m
        p_word = self.word_probs[sid_rank]
        contexts = [self.transition[z][sid_topic] / m * p_word for z in range(k)]
        contexts.append(self.stationary[sid_topic] / m * p_word)
        for z in range(k):
            for a in range(m):
                contexts.append(np.where((sid_topic == z) & (sid_marker == a), p_word, 0.0))
        nodes = np.array(path_nodes)
        owner = np.array(path_owner)
        self._children = children
        self._term_za = term_za
        self._mass: list[list[float]] = []
        self._term: list[list[float]] = []
        for weight in contexts:
            mass = np.zeros(len(children))
            np.add.at(mass, nodes, weight[owner])
            term = np.zeros(len(children))
            term[leaf] = weight
            self._mass.append(mass.tolist())
            self._term.append(term.tolist())
        survival = np.cumsum(self.length_probs[::-1])[::-1]  # P(L >= j)
        hazard = np.divide(
            self.length_probs, survival, out=np.zeros_like(survival), where=survival > 0
        )
        self._hazard: list[float] = [*hazard.tolist(), 1.0]  # P(L = j | L >= j), j = 0..max+1

    def _initial_state(self) -> tuple[int, int, int]:
        """(trie node, context, words completed in the current sentence) at a stream start."""
        return 0, self.config.num_topics, 0

    def _step(
        self, state: tuple[int, int, int], ch: str, forget_topic: bool
    ) -> tuple[float, tuple[int, int, int] | None]:
        """Exact ``p(ch | history)`` and the state after ``ch`` (None when ``p == 0``)."""
        node, ctx, done = state
        mass = self._mass[ctx]
        if ch in (WORD_SEP, PHRASE_END):
            ends = self._term[ctx][node]
            if ends == 0.0:
                return 0.0, None
            stop = self._hazard[done + 1]
            p = ends / mass[node] * (stop if ch == PHRASE_END else 1.0 - stop)
            if p == 0.0:
                return 0.0, None
            z, a = self._term_za[node]  # type: ignore[misc]
            k, m = self.config.num_topics, self.config.num_markers
            if ch == WORD_SEP:
                return p, (0, k + 1 + z * m + a, done + 1)
            return p, (0, k if forget_topic else z, 0)
        child = self._children[node].get(ch)
        if child is None or mass[child] == 0.0:
            return 0.0, None
        return mass[child] / mass[node], (child, ctx, done)

    def _run(self, prefix: str, forget_topic: bool) -> tuple[np.ndarray, tuple[int, int, int]]:
        out = np.empty(len(prefix), dtype=np.float64)
        state: tuple[int, int, int] | None = self._initial_state()
        step = self._step
        log2 = math.log2
        for t, ch in enumerate(prefix):
            p, state = step(state, ch, forget_topic)  # type: ignore[arg-type]
            if state is None:
                raise ValueError(f"character {t} ({ch!r}) has probability 0 under the source")
            out[t] = -log2(p)
        return out, state  # type: ignore[return-value]

    def neg_log2_prob(self, text: str, *, forget_topic: bool = False) -> np.ndarray:
        """Exact ``-log2 p(text[t] | text[:t])`` for every ``t`` (float64 array of len(text)).

        ``text`` must start at a sentence start; the first sentence's topic is stationary. With
        ``forget_topic=True`` every sentence starts from the stationary topic distribution (the
        model of :meth:`topic_forgetting_rate`). Raises ValueError on an impossible character.
        """
        return self._run(text, forget_topic)[0]

    def next_char_distribution(self, prefix: str, *, forget_topic: bool = False) -> np.ndarray:
        """Exact ``p(next char | prefix)`` over :attr:`alphabet` (float64 array, sums to 1).

        Uses the same code path as :meth:`neg_log2_prob`.
        """
        state = self._run(prefix, forget_topic)[1]
        return np.array([self._step(state, ch, forget_topic)[0] for ch in self.alphabet])


def unigram_bpc(train: str, test: str, smoothing: float = 0.0) -> float:
    """Cross-entropy (bits/char) on ``test`` of the character unigram distribution of ``train``.

    ``p(c) = (count_train(c) + smoothing) / (len(train) + smoothing * V)`` with ``V`` the number of
    distinct characters of ``train + test``. Without smoothing, a test character absent from
    ``train`` gives ``inf``.
    """
    if not test:
        raise ValueError("test must not be empty")
    symbols = sorted(set(train) | set(test))
    index = {c: i for i, c in enumerate(symbols)}
    train_ids = np.fromiter((index[c] for c in train), dtype=np.int64, count=len(train))
    test_ids = np.fromiter((index[c] for c in test), dtype=np.int64, count=len(test))
    counts = np.bincount(train_ids, minlength=len(symbols)) + smoothing
    total = counts.sum()
    if total == 0:
        raise ValueError("train must not be empty unless smoothing > 0")
    with np.errstate(divide="ignore"):
        neg_log2 = -np.log2(counts / total)
    return float(neg_log2[test_ids].mean())


def make_splits(
    config: SyntheticConfig, train_chars: int, valid_chars: int, test_chars: int
) -> dict[str, SyntheticText]:
    """Independent samples of one source for 'train', 'valid' and 'test' (sample seeds 0, 1, 2)."""
    source = HierarchicalSource(config)
    sizes = {"train": train_chars, "valid": valid_chars, "test": test_chars}
    return {name: source.sample(n, seed=i) for i, (name, n) in enumerate(sizes.items())}


class SyntheticDataModule(CharStreamDataModule):
    """The embedded default data set: :class:`HierarchicalSource` samples, nothing to download.

    ``data.train_chars`` / ``valid_chars`` / ``test_chars`` set the split sizes and
    ``data.source_seed`` the lexicon; the splits are independent samples (seeds 0, 1, 2).
    """

    def __init__(self, config: DataConfig) -> None:
        super().__init__(config)
        self.source = HierarchicalSource(SyntheticConfig(seed=config.source_seed))
        self.texts: dict[str, SyntheticText] = {}

    def load(self) -> tuple[dict[str, np.ndarray], Vocabulary]:
        c = self.config
        self.texts = make_splits(self.source.config, c.train_chars, c.valid_chars, c.test_chars)
        vocab = Vocabulary(tuple(self.source.alphabet))
        return {name: vocab.encode(t.text) for name, t in self.texts.items()}, vocab

    def delimiter_ids(self) -> list[int]:
        return self.symbol_ids([WORD_SEP, PHRASE_END])

    def truth_rules(self) -> dict[str, tuple[list[int], list[int]]]:
        """``word``: the last letter of a word and the phrase end '.'; ``phrase``: the '.'
        (the generator's own ``word_end | phrase_end`` and ``phrase_end``)."""
        (end,) = self.symbol_ids(PHRASE_END)
        return {"word": (self.delimiter_ids(), [end]), "phrase": ([], [end])}

    def boundaries(self, split: str) -> dict[str, np.ndarray]:
        """The generator's boundaries: equal to the rules' except at the very last position,
        where the generator knows whether the word ends and the rules cannot look ahead
        (``word_at_delim``, which looks back, is the rules')."""
        marks = super().boundaries(split)
        text = self.texts[split]
        return marks | {"word": text.word_end | text.phrase_end, "phrase": text.phrase_end}

    def reference_rates(self) -> dict[str, float]:
        """Bits per character of the source's exact predictor and of the trivial baselines."""
        self.setup()
        return {
            "entropy_rate": self.source.entropy_rate(),
            "topic_forgetting_rate": self.source.topic_forgetting_rate(),
            "unigram_bpc": unigram_bpc(self.texts["train"].text, self.texts["test"].text),
        }
