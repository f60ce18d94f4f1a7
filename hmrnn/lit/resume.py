"""Resuming exactly: random generator states and ``last.ckpt``, saved where a resume continues
bit for bit, on SIGTERM / SIGINT, and before the disk fills up."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn

from hmrnn.lit.checkpoint_io import CheckpointWriteError, run_folder_of


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


class RNGState(L.Callback):
    """Saves the RNG states in checkpoints and restores them when training resumes.

    Lightning saves none; the Bernoulli boundary estimator draws from torch's generator, so a
    resumed run needs them to continue bit for bit. Restored in ``on_train_start``, after
    Lightning has set up the loaders and before the first resumed batch.

    Under DDP every rank would start from the same seed and so draw the same noise for its block
    of rows; at the start of fitting each rank's torch generator is seeded apart (from the seed
    and the rank), and the checkpoint holds every rank's states (``{"ranks": [...]}``).
    """

    def __init__(self) -> None:
        self.pending: dict[str, Any] | None = None
        self.trainer: L.Trainer | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.trainer = trainer

    def state_dict(self) -> dict[str, Any]:
        trainer = self.trainer
        if trainer is None or trainer.world_size == 1:
            return rng_state()
        ranks: list[Any] = [None] * trainer.world_size  # every rank saves: collective
        torch.distributed.all_gather_object(ranks, rng_state())
        return {"ranks": ranks}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.pending = state_dict

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.world_size > 1:
            key = f"{torch.initial_seed()}:{trainer.global_rank}".encode()
            torch.manual_seed(int.from_bytes(hashlib.sha256(key).digest()[:8], "little") >> 1)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.pending is not None:
            ranks = self.pending.get("ranks", [self.pending])
            if len(ranks) == trainer.world_size:
                set_rng_state(ranks[trainer.global_rank])
            else:  # resumed on another number of processes: it cannot be bit-identical anyway
                rank_zero_warn(
                    f"the checkpoint holds the random states of {len(ranks)} processes, this run "
                    f"has {trainer.world_size}: random draws continue from fresh seeds"
                )
            self.pending = None


class ResumeCheckpoint(L.Callback):
    """``last.ckpt`` for resuming: written atomically, only where a resume continues exactly.

    Lightning restores a run mid-epoch only from a batch end after which no validation is due and
    which is not the epoch's last (from such a point it would skip the validation, and the plateau
    schedule with it). So this callback saves at the first such batch end once ``every_n_steps``
    steps have passed (or after each validation, when 0), when SIGTERM or SIGINT (Ctrl-C) arrives
    (then it stops the run: cluster preemption, or a user stopping it; a second Ctrl-C stops at
    once), and when training ends. ``stop_signal`` names the signal that stopped the run.

    Before each save the current ``last.ckpt`` becomes ``previous.ckpt`` (a hard link, or a copy
    where links are not allowed), so a run whose ``last.ckpt`` is damaged resumes from the one
    before. Files are written by :class:`~hmrnn.lit.checkpoint_io.AtomicCheckpointIO`: to a
    temporary name, then renamed, so a kill while writing leaves the previous file whole.
    """

    def __init__(self, path: str | Path, every_n_steps: int = 0, min_free_mb: int = 0) -> None:
        self.path = Path(path)
        self.previous = self.path.with_name("previous.ckpt")
        self.every_n_steps = every_n_steps
        self.min_free = min_free_mb * 2**20
        self.due = False
        self.sigterm = False
        self.stop_signal: int | None = None
        self.short_of_space = ""
        self.saved_step = -1
        self.stop: BaseException | None = None  # raised at the next batch start
        self._next_space_check = 0.0
        self._previous_handlers: dict[int, Any] = {}

    # -- triggers
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
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
        if trainer.is_global_zero:  # rank 0 writes the files
            self.check_space(now=self.due)
        # every rank must agree: a signal may reach only one of them
        stop = trainer.strategy.reduce_boolean_decision(
            self.sigterm or bool(self.short_of_space), all=False
        )
        if (self.due or stop) and self.safe(trainer, batch_idx):
            reason = trainer.strategy.broadcast(self.short_of_space, src=0) if stop else ""
            if reason:
                self.stop = self.stop_for_space(trainer, reason)
            else:
                self.save(trainer)
                self.due = False
            if stop and not reason:
                name = signal.Signals(self.stop_signal or signal.SIGTERM).name
                rank_zero_info(f"{name}: saved {self.path}; resume with resume={self.path}")
                self.stop = SIGTERMException()

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # The log row of the batch that was saved is recorded after its batch end: write it now,
        # and stop here (not at that batch end), so that no log row is lost or repeated.
        if self.saved_step == trainer.global_step:
            flush(trainer)
        if self.stop is not None:
            raise self.stop

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.stop is not None:  # the last step came right after the save: stop as promised
            flush(trainer)
            raise self.stop
        self.save(trainer)

    # -- free space (W&B's writer fails silently on a full disk, so the run looks ahead)
    def checkpoint_size(self) -> int:
        sizes = [p.stat().st_size for p in (self.path, self.previous) if p.is_file()]
        return max(sizes, default=0)

    def nearest_folder(self) -> Path:
        """The checkpoint folder, or its nearest existing parent before the first save."""
        return next(p for p in (self.path.parent, *self.path.parents) if p.exists())

    def check_space(self, now: bool = False) -> None:
        """Sets ``short_of_space`` when the folder has less free space than a checkpoint plus
        ``min_free_mb``; measured before each save (``now``) and at most every 5 seconds."""
        clock = time.monotonic()
        if not self.min_free or (clock < self._next_space_check and not now):
            return
        self._next_space_check = clock + 5.0
        folder = self.nearest_folder()
        free, need = shutil.disk_usage(folder).free, self.checkpoint_size() + self.min_free
        if free < need:
            self.short_of_space = (
                f"only {free / 2**20:.0f} MB are free on the file system of {folder} (a "
                f"checkpoint takes {self.checkpoint_size() / 2**20:.0f} MB, and "
                f"trainer.min_free_mb={self.min_free // 2**20} are kept free for the logs)"
            )

    def stop_for_space(self, trainer: L.Trainer, reason: str) -> DiskSpaceError:
        """Save once more if that still fits; the error that stops the run."""
        room = shutil.disk_usage(self.nearest_folder()).free > self.checkpoint_size() + 2**20
        kept = f"{self.path.name} is intact"
        if trainer.strategy.broadcast(room, src=0):
            self.save(trainer)
            kept = f"saved {self.path.name} at step {trainer.global_step}"
        return DiskSpaceError(
            f"{reason}; the run stopped and {kept}: free space, then continue with "
            f"python -m hmrnn.train resume={run_folder_of(self.path)}"
        )

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # Lightning restores its own handlers at teardown too: only undo what is still ours
        for signum, previous in self._previous_handlers.items():
            if previous is not None and signal.getsignal(signum) == self._on_signal:
                signal.signal(signum, previous)
        self._previous_handlers = {}

    def save(self, trainer: L.Trainer) -> None:
        """Keep ``last.ckpt`` as ``previous.ckpt``, then write the new one (every rank calls it:
        saving is collective)."""
        if (
            trainer.is_global_zero
            and self.path.is_file()
            and trainer.global_step != self.saved_step
        ):
            keep_as(self.path, self.previous)  # (a second save at one step only rewrites last)
        flush(trainer)  # the log rows up to this batch are on disk before its checkpoint
        self.saved_step = trainer.global_step
        # atomic (AtomicCheckpointIO); collective: ends in a barrier
        trainer.save_checkpoint(str(self.path), weights_only=False)


def flush(trainer: L.Trainer) -> None:
    """Write the loggers' buffered rows (Lightning's CSV log keeps 100 steps in memory)."""
    for logger in trainer.loggers:
        logger.save()


class DiskSpaceError(CheckpointWriteError):
    """The run stopped because the disk is about to fill up (``trainer.min_free_mb``)."""


def keep_as(source: Path, target: Path) -> None:
    """Make ``target`` a whole copy of ``source`` (a hard link where possible), atomically."""
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        try:
            os.link(source, tmp)
        except OSError:  # a file system without hard links
            shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        raise CheckpointWriteError(
            f"keeping {source} as {target.name} failed ({error.strerror or error}); "
            f"{source.name} is intact: free space, then continue with python -m hmrnn.train "
            f"resume={run_folder_of(source)}"
        ) from error
