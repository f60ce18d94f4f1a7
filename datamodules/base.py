"""What every data set is to the commands: :class:`DataSetModule`, and :class:`DataError`.

The commands (``hmrnn.train``, ``hmrnn.evaluate``, ``hmrnn.visualize``) see a data set only
through this interface: which kind of model it wants (:attr:`DataSetModule.kind`), how many
training batches an epoch holds and whether the splits are long enough for the batching, its
vocabulary, and the true boundaries the detectors are scored against. Two kinds derive from it:
:class:`datamodules.stream.CharStreamDataModule` (a stream of symbols) and
:class:`datamodules.iam.IAMOnDBDataModule` (sequences of pen points).
"""

from __future__ import annotations

import abc
from typing import ClassVar

import lightning as L
import numpy as np

from hmrnn.config import DataConfig

SPLITS = ("train", "valid", "test")
KINDS = ("text", "handwriting")
"""The values of :attr:`DataSetModule.kind`: the LightningModule a data set is modelled by."""


class DataError(ValueError):
    """Missing, corrupt or unusable data; the message names the file and what to do."""


class DataSetModule(L.LightningDataModule, abc.ABC):
    """A data set as the commands see it: a LightningDataModule with the interface below.

    ``kind`` is ``"text"`` (symbols, modelled by ``LitCharLM``) or ``"handwriting"`` (pen
    points, ``LitHandwriting``). Batches follow ``self.trainer``'s rank and world size, so
    ``Trainer(use_distributed_sampler=False)`` is required (``hmrnn.train`` sets it).
    """

    kind: ClassVar[str]

    def __init__(self, config: DataConfig) -> None:
        if getattr(self, "kind", None) not in KINDS:
            raise TypeError(f"{type(self).__name__}.kind must be one of {KINDS}")
        super().__init__()
        self.config = config

    # -- the batching
    @abc.abstractmethod
    def train_batches(self) -> int:
        """Training batches in an epoch for the configured batching (of this rank: every rank
        runs as many), counted by the code that builds the training loader."""

    @abc.abstractmethod
    def check_batching(self) -> None:
        """DataError naming ``data.batch_size`` (or ``data.eval_batch_size``) and the fix when a
        split is too short for the configured batching; nothing otherwise."""

    def batch_size_of(self, split: str) -> int:
        """``data.batch_size`` for training, ``data.eval_batch_size`` (when set) otherwise."""
        if split != "train" and self.config.eval_batch_size:
            return self.config.eval_batch_size
        return self.config.batch_size

    def _rank(self) -> tuple[int, int]:
        """This process's rank and the number of processes (0, 1 without a trainer)."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0, 1
        return trainer.global_rank, trainer.world_size

    # -- what a model needs to know of the data
    @abc.abstractmethod
    def vocabulary(self) -> list[str] | None:
        """The symbols in id order (what checkpoints keep for decoding); None for points."""

    def delimiter_ids(self) -> list[int]:
        """Ids of the symbols that separate words (what ``model=fixed_boundary`` counts with
        ``model.fixed_source=delimiter``); empty where the data set has none."""
        return []

    def truth_rules(self) -> dict[str, tuple[list[int], list[int]]]:
        """Each kind of true boundary as ``(before, at)`` symbol ids, by which the validation
        metrics mark every batch (see :meth:`CharStreamDataModule.truth_rules`); {} for none."""
        return {}

    def boundaries(self, split: str) -> dict[str, np.ndarray]:
        """True boundaries of a split by kind, bool arrays over its symbol stream; {} where the
        data set has none to score the detectors against."""
        return {}

    def reference_rates(self) -> dict[str, float]:
        """Known bits per symbol of reference predictors (e.g. the exact entropy rate); {}."""
        return {}


__all__ = ["KINDS", "SPLITS", "DataError", "DataSetModule"]
