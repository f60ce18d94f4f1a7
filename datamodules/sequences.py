"""Variable-length sequences of points: a store, padded time-major batches, length buckets.

:class:`SequenceSet` keeps sequences end to end (the cache's layout). :func:`collate_sequences`
pads a batch into time-major ``(inputs (T, B, 3), targets (T, B, 3), mask (T, B) bool,
lengths (B,))`` with inputs = points[:-1], targets = points[1:], so every real target point is
counted once and padding never. :class:`LengthBatchSampler` buckets training batches by length,
reshuffles them every epoch from a seeded generator and shares them out over DDP ranks
(``Trainer(use_distributed_sampler=False)`` is required, as for the character streams).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from datamodules.base import DataError

BUCKET_BATCHES = 50
"""Training batches are formed inside shuffled chunks of this many batches, sorted by length."""


@dataclass
class SequenceSet:
    """Sequences stored end to end: sequence i is ``points[offsets[i]:offsets[i + 1]]``."""

    points: np.ndarray  # (P, 3) float32
    offsets: np.ndarray  # (n + 1,) int64
    names: list[str]

    @classmethod
    def from_list(cls, names: list[str], seqs: list[np.ndarray]) -> SequenceSet:
        lengths = np.array([len(s) for s in seqs], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        points = np.concatenate(seqs) if seqs else np.zeros((0, 3), np.float32)
        return cls(points.astype(np.float32, copy=False), offsets, list(names))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self.points[self.offsets[i] : self.offsets[i + 1]]

    @property
    def lengths(self) -> np.ndarray:
        """Points per sequence, (n,) int64."""
        return np.diff(self.offsets)


# ---------------------------------------------------------------------------------------------
# batching


class HandwritingSequences(Dataset):
    """Item i: sequence i as a float32 tensor (L_i, 3)."""

    def __init__(self, sequences: SequenceSet) -> None:
        self.sequences = sequences

    def __len__(self) -> int:
        return len(self.sequences)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(self.sequences[i])  # a view of the store: collate copies it


def collate_sequences(
    items: list[torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pad a list of (L_i, 3) sequences (L_i >= 2) into one time-major batch.

    Returns ``inputs`` (T, B, 3) = points[:-1], ``targets`` (T, B, 3) = points[1:], ``mask`` (T, B)
    bool, True on the L_i - 1 real steps, and ``lengths`` (B,) int64 = L_i - 1, with
    T = max(lengths). Padding is zeros and mask False.
    """
    if not items:
        raise ValueError("collate_sequences needs at least one sequence")
    arrays = [np.asarray(x, dtype=np.float32) for x in items]
    lengths = np.array([len(x) - 1 for x in arrays], dtype=np.int64)
    if lengths.min() < 1:
        raise ValueError("every sequence needs at least 2 points (an input and a target)")
    T, B = int(lengths.max()), len(arrays)
    inputs = np.zeros((T, B, 3), dtype=np.float32)  # filled in numpy: much faster than torch
    targets = np.zeros((T, B, 3), dtype=np.float32)  # indexing for these small copies
    for b, x in enumerate(arrays):
        inputs[: len(x) - 1, b] = x[:-1]
        targets[: len(x) - 1, b] = x[1:]
    mask = np.arange(T)[:, None] < lengths[None, :]
    return (
        torch.from_numpy(inputs),
        torch.from_numpy(targets),
        torch.from_numpy(mask),
        torch.from_numpy(lengths),
    )


class LengthBatchSampler(Sampler[list[int]]):
    """Batches of sequence indices, similar lengths together, shared out over DDP ranks.

    ``batch_size`` is global (all ranks together), like ``data.batch_size``.

    Training (``shuffle=True``): per epoch a generator seeded with ``(seed, epoch)`` permutes the
    sequences; each chunk of ``BUCKET_BATCHES`` batches is sorted by length and cut into global
    batches, and the batch order is permuted. Every rank computes the same global batches and
    takes every ``world_size``-th sequence of each (rank r: positions r, r + W, ...), so all ranks
    run the same number of steps; a last global batch with fewer than ``world_size`` sequences
    is dropped (at most W - 1 sequences an epoch, different ones each epoch). Lightning calls
    :meth:`set_epoch`; used alone, each iteration moves on to the next epoch's order.

    Evaluation (``shuffle=False``): sequences sorted by length (ties by index); rank r takes
    sequences r, r + W, ... of that order and batches them by ``ceil(batch_size / W)``. Every
    sequence is evaluated exactly once on one rank; ranks may differ by one batch, so metrics
    must be summed per rank and reduced at epoch end (e.g. a torchmetrics sum), not synced per
    step.
    """

    def __init__(
        self,
        lengths: np.ndarray,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size < 1:
            raise DataError(f"the batch size must be positive, got {batch_size}")
        if shuffle and batch_size % world_size:
            raise DataError(
                f"data.batch_size={batch_size} must be divisible by the number of processes "
                f"({world_size}) so that every rank holds the same number of sequences"
            )
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.start = 0  # batches of the next training epoch to skip once (mid-epoch resume)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def global_batches(self, epoch: int) -> list[np.ndarray]:
        """The training epoch's global batches (before the split over ranks)."""
        n, size = len(self.lengths), self.batch_size
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(n)
        batches = []
        chunk = size * BUCKET_BATCHES
        for start in range(0, n, chunk):
            idx = order[start : start + chunk]
            idx = idx[np.argsort(self.lengths[idx], kind="stable")]
            batches += [idx[i : i + size] for i in range(0, len(idx), size)]
        batches = [b for b in batches if len(b) >= self.world_size]
        return [batches[i] for i in rng.permutation(len(batches))]

    def _eval_batches(self) -> list[list[int]]:
        order = np.argsort(self.lengths, kind="stable")[self.rank :: self.world_size]
        local = math.ceil(self.batch_size / self.world_size)
        return [order[i : i + local].tolist() for i in range(0, len(order), local)]

    def __iter__(self) -> Iterator[list[int]]:
        if not self.shuffle:
            return iter(self._eval_batches())
        epoch, self.epoch = self.epoch, self.epoch + 1
        start, self.start = self.start, 0
        batches = self.global_batches(epoch)[start:]
        return iter([b[self.rank :: self.world_size].tolist() for b in batches])

    def __len__(self) -> int:
        if not self.shuffle:
            n = len(range(self.rank, len(self.lengths), self.world_size))
            return math.ceil(n / math.ceil(self.batch_size / self.world_size))
        n, size = len(self.lengths), self.batch_size
        full, rest = divmod(n, size)
        return full + (1 if rest >= self.world_size else 0)


__all__ = [
    "BUCKET_BATCHES",
    "HandwritingSequences",
    "LengthBatchSampler",
    "SequenceSet",
    "collate_sequences",
]
