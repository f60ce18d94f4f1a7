"""Training policy as callbacks: slope annealing, throughput, non-finite guard.

The callbacks that make a run resumable (:class:`RNGState`, :class:`ResumeCheckpoint`) live in
:mod:`hmrnn.lit.resume` and are importable from here too.
"""

from __future__ import annotations

import time
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_info

from hmrnn.config import SlopeConfig
from hmrnn.lit.resume import DiskSpaceError, ResumeCheckpoint, RNGState, rng_state, set_rng_state


def slope_at(config: SlopeConfig, epoch: float) -> float:
    """model.md §2: a = min(a_max, 1 + k * epoch), epoch counted fractionally."""
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
        value = slope_at(self.config, trainer.current_epoch + fraction)
        if hasattr(slope, "set_slope"):
            slope.set_slope(value)  # the loop then reads it without a device synchronisation
        else:
            slope.slope.fill_(value)


class Throughput(L.Callback):
    """Symbols (characters or pen points) per second of training (all ranks), logged as
    ``train/chars_per_sec``."""

    def __init__(self) -> None:
        self.start = 0.0
        self.chars = 0
        self.seconds = 0.0

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self.start = time.perf_counter()

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        seconds = time.perf_counter() - self.start
        if isinstance(batch, torch.Tensor):  # a (T + 1, B) character segment
            chars = (batch.shape[0] - 1) * batch.shape[1] * trainer.world_size
        else:  # padded sequences: count the real target points
            chars = int(batch[2].sum()) * trainer.world_size
        self.chars += chars
        self.seconds += seconds
        pl_module.log(
            "train/chars_per_sec", chars / max(seconds, 1e-9), prog_bar=True, rank_zero_only=True
        )

    @property
    def mean_chars_per_sec(self) -> float:
        return self.chars / self.seconds if self.seconds else 0.0


class NonFiniteError(RuntimeError):
    """Training met a NaN or inf loss or gradient (``trainer.nonfinite=stop``)."""


class NonFinite(L.Callback):
    """Guards the optimizer step against a NaN or inf loss or gradient.

    The check runs before the step (after DDP has all-reduced the gradients, so every rank
    decides alike). ``stop`` raises :class:`NonFiniteError` naming the step and the culprit: the
    parameters were not touched, and ``last.ckpt`` holds the last good state. ``skip`` drops the
    gradients (Adam then updates nothing, its moments included) and counts the batch.
    """

    def __init__(self, action: str = "stop", resume_hint: str = "") -> None:
        self.action = action
        self.resume_hint = resume_hint
        self.skipped = 0
        self.loss_bad = False

    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped = int(state_dict.get("skipped", 0))

    def on_before_backward(
        self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor
    ) -> None:
        self.loss_bad = not bool(torch.isfinite(loss.detach()).all())

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any
    ) -> None:
        culprit = "the training loss" if self.loss_bad else ""
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        # one fused pass over every gradient; the parameter is looked up only when one is bad
        if (
            not culprit
            and grads
            and not bool(torch.stack(torch._foreach_norm(grads)).isfinite().all())
        ):
            culprit = next(
                f"the gradient of {name}"
                for name, p in pl_module.named_parameters()
                if p.grad is not None and not bool(torch.isfinite(p.grad).all())
            )
        bad = trainer.strategy.reduce_boolean_decision(bool(culprit), all=False)
        self.loss_bad = False
        if not bad:
            return
        step = trainer.global_step
        if self.action == "skip":
            self.skipped += 1
            optimizer.zero_grad(set_to_none=True)
            rank_zero_info(f"step {step}: {culprit or 'a gradient'} is not finite; batch skipped")
        else:
            culprit = culprit or "a gradient on another rank"
            raise NonFiniteError(
                f"step {step} (epoch {trainer.current_epoch}): {culprit} is NaN or inf; "
                "the run stopped before updating the parameters. "
                f"{self.resume_hint}Lower optim.lr, or set trainer.nonfinite=skip to skip such "
                "batches."
            )

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if self.skipped:
            pl_module.log("train/skipped_batches", float(self.skipped), rank_zero_only=True)


__all__ = [
    "DiskSpaceError",
    "NonFinite",
    "NonFiniteError",
    "RNGState",
    "ResumeCheckpoint",
    "SlopeAnnealing",
    "Throughput",
    "rng_state",
    "set_rng_state",
    "slope_at",
]
