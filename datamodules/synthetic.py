"""Synthetic character corpus with a known hierarchy and an exactly computable entropy rate.

The embedded default data set: characters -> words -> sentences (phrases) -> topics, e.g.::

    kygrt kviat tzut bknt tzut.jrhts iaqls hxwqs rfs.dgesq bknq phq gtq bknq.ieaq wxq ybq wxq.

Split by concern; every public name stays importable from here:

- :mod:`datamodules.synthetic_config`: :class:`SyntheticConfig` and the separators
  ``WORD_SEP`` (' ') and ``PHRASE_END`` ('.');
- :mod:`datamodules.synthetic_source`: the generative process, :class:`HierarchicalSource`
  (lexicon, sampling), :class:`SyntheticText` (a sample with its boundaries), :func:`make_splits`;
- :mod:`datamodules.synthetic_exact`: the exact entropy rate (derivation and closed form), the
  reference rates, the exact per-character predictor, :func:`unigram_bpc`;
- here: :class:`SyntheticDataModule`, the LightningDataModule over the three splits.
"""

from __future__ import annotations

import numpy as np

from datamodules.stream import CharStreamDataModule, Vocabulary
from datamodules.synthetic_config import PHRASE_END, WORD_SEP, SyntheticConfig
from datamodules.synthetic_exact import unigram_bpc
from datamodules.synthetic_source import HierarchicalSource, SyntheticText, make_splits
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
