"""Training policy as callbacks: slope annealing, throughput, RNG state, resumable checkpoints."""

from __future__ import annotations

import random
import signal
import threading
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_info

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


# ------------------------------------------------------------------------- resume and faults
def rng_state() -> dict[str, Any]:
    """Every global RNG's state as tensors and Python values (loadable with weights_only=True)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()  # type: ignore[misc]
    return {
        "torch": torch.get_rng_state(),
        "numpy": [
            name,
            torch.from_numpy(keys.astype(np.int64)),
            int(pos),
            int(has_gauss),
            float(cached),
        ],
        "python": random.getstate(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(state["python"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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


class RNGState(L.Callback):
    """Saves the RNG states in checkpoints and restores them when training resumes.

    Lightning saves none; the Bernoulli boundary estimator draws from torch's generator, so a
    resumed run needs them to continue bit for bit. Restored in ``on_train_start``, after
    Lightning has set up the loaders and before the first resumed batch.
    """

    def __init__(self) -> None:
        self.pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return rng_state()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.pending = state_dict

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.pending is not None:
            set_rng_state(self.pending)
            self.pending = None


class CheckpointWriteError(OSError):
    """``last.ckpt`` could not be written (the previous one survives)."""


class ResumeCheckpoint(L.Callback):
    """``last.ckpt`` for resuming: written atomically, only where a resume continues exactly.

    Lightning restores a run mid-epoch only from a batch end after which no validation is due and
    which is not the epoch's last (from such a point it would skip the validation, and the plateau
    schedule with it). So this callback saves at the first such batch end once ``every_n_steps``
    steps have passed (or after each validation, when 0), when SIGTERM or SIGINT (Ctrl-C) arrives
    (then it stops the run: cluster preemption, or a user stopping it; a second Ctrl-C stops at
    once), and when training ends. ``stop_signal`` names the signal that stopped the run.

    The file is written to a temporary name and renamed, so a kill while writing leaves the
    previous ``last.ckpt`` intact.
    """

    def __init__(self, path: str | Path, every_n_steps: int = 0) -> None:
        self.path = Path(path)
        self.every_n_steps = every_n_steps
        self.due = False
        self.sigterm = False
        self.stop_signal: int | None = None
        self._previous_handlers: dict[int, Any] = {}

    # -- triggers
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._previous_handlers[signum] = signal.getsignal(signum)
                signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and self.sigterm:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.sigterm = True
        self.stop_signal = signum

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.every_n_steps and trainer.state.fn == "fit" and not trainer.sanity_checking:
            self.due = True

    @staticmethod
    def safe(trainer: L.Trainer, batch_idx: int) -> bool:
        """Whether a checkpoint taken after this batch resumes exactly."""
        n = trainer.num_training_batches
        last = n != float("inf") and batch_idx + 1 >= n
        interval = trainer.val_check_batch
        validation_due = (
            trainer.enable_validation
            and isinstance(interval, int)
            and (batch_idx + 1) % interval == 0
            and (trainer.current_epoch + 1) % (trainer.check_val_every_n_epoch or 1) == 0
        )
        return not last and not validation_due

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if self.every_n_steps and trainer.global_step % self.every_n_steps == 0:
            self.due = True
        # every rank must agree: a signal may reach only one of them
        stop = trainer.strategy.reduce_boolean_decision(self.sigterm, all=False)
        if (self.due or stop) and self.safe(trainer, batch_idx):
            self.save(trainer)
            self.due = False
            if stop:
                name = signal.Signals(self.stop_signal or signal.SIGTERM).name
                rank_zero_info(f"{name}: saved {self.path}; resume with resume={self.path}")
                raise SIGTERMException

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.save(trainer)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # Lightning restores its own handlers at teardown too: only undo what is still ours
        for signum, previous in self._previous_handlers.items():
            if previous is not None and signal.getsignal(signum) == self._on_signal:
                signal.signal(signum, previous)
        self._previous_handlers = {}

    def save(self, trainer: L.Trainer) -> None:
        """Write through a temporary name on rank 0 (every rank must call it)."""
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        try:
            trainer.save_checkpoint(str(tmp))  # collective: ends with a barrier
        except OSError as error:  # e.g. a full disk: the previous last.ckpt is left intact
            tmp.unlink(missing_ok=True)
            raise CheckpointWriteError(
                f"writing {self.path} failed ({error.strerror or error}); the previous "
                f"{self.path.name} is intact: free space, then resume with resume={self.path}"
            ) from error
        if trainer.is_global_zero:
            tmp.replace(self.path)
        trainer.strategy.barrier("ResumeCheckpoint.save")
