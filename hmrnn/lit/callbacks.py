"""Training policy as callbacks: slope annealing and throughput."""

from __future__ import annotations

import time
from typing import Any

import lightning as L
import torch

from hmrnn.config import SlopeConfig


def slope_at(config: SlopeConfig, epoch: float) -> float:
    """SPEC section 2: a = min(a_max, 1 + k * epoch), epoch counted fractionally."""
    return min(config.max_slope, 1.0 + config.rate * epoch)


class SlopeAnnealing(L.Callback):
    """Sets the hard-sigmoid slope before every training batch from the fractional epoch.

    The slope is model state (a buffer, so it is in every checkpoint); this callback is the
    schedule. It is a pure function of (epoch, batch), so a resumed run continues it exactly.
    """

    def __init__(self, config: SlopeConfig) -> None:
        self.config = config

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        slope = getattr(getattr(pl_module, "model", None), "rnn", None)
        if slope is None or not hasattr(slope, "slope"):
            return
        per_epoch = trainer.num_training_batches
        fraction = batch_idx / per_epoch if per_epoch and per_epoch != float("inf") else 0.0
        slope.slope.fill_(slope_at(self.config, trainer.current_epoch + fraction))


class Throughput(L.Callback):
    """Characters per second of training (all ranks), logged as ``train/chars_per_sec``."""

    def __init__(self) -> None:
        self.start = 0.0
        self.chars = 0
        self.seconds = 0.0

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: torch.Tensor, batch_idx: int
    ) -> None:
        self.start = time.perf_counter()

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: torch.Tensor,
        batch_idx: int,
    ) -> None:
        seconds = time.perf_counter() - self.start
        chars = (batch.shape[0] - 1) * batch.shape[1] * trainer.world_size
        self.chars += chars
        self.seconds += seconds
        pl_module.log(
            "train/chars_per_sec", chars / max(seconds, 1e-9), prog_bar=True, rank_zero_only=True
        )

    @property
    def mean_chars_per_sec(self) -> float:
        return self.chars / self.seconds if self.seconds else 0.0
