"""Exact information measures of the synthetic source: entropy rate, reference rates, and
``-log2 p(x_t | x_<t)`` character by character.

The source and its notation (``Z_n``, ``A_n``, ``L_n``, ``R_{n,j}``, ``K``, ``W``, ``M``, ``s``)
are described in :mod:`datamodules.synthetic_source`.

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

:meth:`SourceMeasures.neg_log2_prob` returns the exact ``-log2 p(x_t | x_<t)`` (sum over the
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

Exact ``neg_log2_prob`` on 200k characters takes ~0.12 s.
"""

from __future__ import annotations

import math

import numpy as np

from datamodules.synthetic_config import PHRASE_END, WORD_SEP, SyntheticConfig

__all__ = ["ExactPredictor", "SourceMeasures", "unigram_bpc"]

State = tuple[int, int, int]
"""(trie node, context, words completed in the current sentence) of :class:`ExactPredictor`."""


class SourceMeasures:
    """The exact information measures of a source, from its distributions (the base class of
    :class:`~datamodules.synthetic_source.HierarchicalSource`, which sets the attributes below).
    """

    config: SyntheticConfig
    alphabet: str
    stems: tuple[tuple[str, ...], ...]
    word_probs: np.ndarray
    transition: np.ndarray
    stationary: np.ndarray
    length_probs: np.ndarray
    _predictor: ExactPredictor

    def _topic_word_entropy(self) -> float:
        """Entropy (bits) of the stem of one word given its topic (the same for every topic)."""
        p = self.word_probs
        return float(-(p * np.log2(p)).sum())

    @staticmethod
    def _entropy(p: np.ndarray) -> float:
        """Entropy in bits of the distribution ``p`` (zero entries allowed)."""
        p = p[p > 0]
        return float(-(p * np.log2(p)).sum())

    def _topic_entropy(self) -> float:
        """H(Z'|Z): entropy (bits) of a sentence's topic given the previous one, at stationarity."""
        return float(self.stationary @ [self._entropy(row) for row in self.transition])

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
        return (
            self._topic_entropy()
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
        gap = self._entropy(self.stationary) - self._topic_entropy()
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

    def neg_log2_prob(self, text: str, *, forget_topic: bool = False) -> np.ndarray:
        """Exact ``-log2 p(text[t] | text[:t])`` for every ``t`` (float64 array of len(text)).

        ``text`` must start at a sentence start; the first sentence's topic is stationary. With
        ``forget_topic=True`` every sentence starts from the stationary topic distribution (the
        model of :meth:`topic_forgetting_rate`). Raises ValueError on an impossible character.
        """
        return self._predictor.run(text, forget_topic)[0]

    def next_char_distribution(self, prefix: str, *, forget_topic: bool = False) -> np.ndarray:
        """Exact ``p(next char | prefix)`` over :attr:`alphabet` (float64 array, sums to 1).

        Uses the same code path as :meth:`neg_log2_prob`.
        """
        state = self._predictor.run(prefix, forget_topic)[1]
        step = self._predictor.step
        return np.array([step(state, ch, forget_topic)[0] for ch in self.alphabet])


class ExactPredictor:
    """Exact ``p(next char | history)`` of the source: one character trie over all surface forms,
    with a prefix-mass table per context.

    Context ``z < K``: first word of a sentence after a sentence of topic ``z``
    (weights ``T[z, z'] * 1/M * p(r)``); ``K``: first word under the stationary prior
    (``pi(z') / M * p(r)``); ``K + 1 + z * M + a``: a later word of a sentence whose topic and
    marker, decoded from its first word, are ``(z, a)`` (weights ``p(r)`` on those forms only).
    ``mass[c][n]`` is the total weight of forms through node ``n``, ``term[c][n]`` that of the
    form ending at ``n``; ``term_za[n]`` is the ``(topic, marker)`` of that form (unique).

    Args:
        source: the distributions (``config``, ``word_probs``, ``transition``, ``stationary``,
            ``length_probs``).
        surfaces: the surface forms, ``surfaces[(z * W + r) * M + a] = stems[z][r] + markers[a]``.
    """

    def __init__(self, source: SourceMeasures, surfaces: list[str]) -> None:
        cfg = source.config
        self._k, self._w, self._m = cfg.num_topics, cfg.words_per_topic, cfg.num_markers
        nodes, owner, leaf = self._insert_forms(surfaces)
        self._mass: list[list[float]] = []
        self._term: list[list[float]] = []
        for weight in self._context_weights(source, len(surfaces)):
            mass = np.zeros(len(self._children))
            np.add.at(mass, nodes, weight[owner])
            term = np.zeros(len(self._children))
            term[leaf] = weight
            self._mass.append(mass.tolist())
            self._term.append(term.tolist())
        survival = np.cumsum(source.length_probs[::-1])[::-1]  # P(L >= j)
        hazard = np.divide(
            source.length_probs, survival, out=np.zeros_like(survival), where=survival > 0
        )
        self._hazard: list[float] = [*hazard.tolist(), 1.0]  # P(L = j | L >= j), j = 0..max+1

    def _insert_forms(self, surfaces: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Build the trie (``_children``, ``_term_za``); return, for every form, the nodes on its
        path (root included) with the form owning each, and the node where each form ends."""
        w, m = self._w, self._m
        self._children: list[dict[str, int]] = [{}]
        self._term_za: list[tuple[int, int] | None] = [None]
        children, term_za = self._children, self._term_za
        path_nodes: list[int] = []
        path_owner: list[int] = []
        leaf = np.zeros(len(surfaces), dtype=np.int64)
        for sid, form in enumerate(surfaces):
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
        return np.array(path_nodes), np.array(path_owner), leaf

    def _context_weights(self, source: SourceMeasures, num_forms: int) -> list[np.ndarray]:
        """The weight of every surface form in every context (see the class docstring)."""
        k, w, m = self._k, self._w, self._m
        sid_topic = np.arange(num_forms) // m // w
        sid_rank = np.arange(num_forms) // m % w
        sid_marker = np.arange(num_forms) % m
        p_word = source.word_probs[sid_rank]
        contexts = [source.transition[z][sid_topic] / m * p_word for z in range(k)]
        contexts.append(source.stationary[sid_topic] / m * p_word)
        for z in range(k):
            for a in range(m):
                contexts.append(np.where((sid_topic == z) & (sid_marker == a), p_word, 0.0))
        return contexts

    def initial_state(self) -> State:
        """(trie node, context, words completed in the current sentence) at a stream start."""
        return 0, self._k, 0

    def step(self, state: State, ch: str, forget_topic: bool) -> tuple[float, State | None]:
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
            k, m = self._k, self._m
            if ch == WORD_SEP:
                return p, (0, k + 1 + z * m + a, done + 1)
            return p, (0, k if forget_topic else z, 0)
        child = self._children[node].get(ch)
        if child is None or mass[child] == 0.0:
            return 0.0, None
        return mass[child] / mass[node], (child, ctx, done)

    def run(self, prefix: str, forget_topic: bool) -> tuple[np.ndarray, State]:
        """``-log2 p`` of every character of ``prefix`` (from a stream start) and the state after
        it; raises ValueError on a character of probability 0."""
        out = np.empty(len(prefix), dtype=np.float64)
        state: State | None = self.initial_state()
        step = self.step
        log2 = math.log2
        for t, ch in enumerate(prefix):
            p, state = step(state, ch, forget_topic)  # type: ignore[arg-type]
            if state is None:
                raise ValueError(f"character {t} ({ch!r}) has probability 0 under the source")
            out[t] = -log2(p)
        return out, state  # type: ignore[return-value]


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
