"""The parameters of the synthetic source and its two separator characters.

Shared by the generator (:mod:`datamodules.synthetic_source`) and the exact measures
(:mod:`datamodules.synthetic_exact`), which is why it stands alone.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PHRASE_END", "WORD_SEP", "SyntheticConfig"]

WORD_SEP = " "
"""Separator between two words of the same sentence."""
PHRASE_END = "."
"""Delimiter that ends every sentence (it is the last character of the sentence)."""


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
        self._check_ranges()
        self._check_lexicon_fits()

    def _check_ranges(self) -> None:
        """Each parameter on its own (and the two that only make sense together)."""
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

    def _check_lexicon_fits(self) -> None:
        """The letters allow enough distinct stems and markers (without ' ' or '.')."""
        letters = set(self.letters)
        if len(letters) != len(self.letters) or not letters or letters & {WORD_SEP, PHRASE_END}:
            raise ValueError("letters must be distinct and must not contain ' ' or '.'")
        n = len(self.letters)
        capacity = sum(n**k for k in range(self.min_stem_length, self.max_stem_length + 1))
        if capacity < 2 * self.num_topics * self.words_per_topic:
            raise ValueError("too few distinct stems of the allowed lengths for the lexicon")
        if n**self.marker_length < self.num_markers:
            raise ValueError("too few distinct markers of length marker_length")
