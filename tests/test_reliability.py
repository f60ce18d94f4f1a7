"""Faults injected into real (tiny) training runs: the run stops or carries on as promised and
nothing good is lost (docs/reliability.md lists each fault and its test)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hmrnn import train as train_command
from hmrnn.lit.callbacks import NonFiniteError
from hmrnn.lit.module import LitCharLM
from tests.test_train import TINY

POISONED_STEP = 12


def poison(monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    """Make the training loss (or only a gradient) NaN at one step."""
    original = LitCharLM._step

    def step(self, split, batch):
        loss = original(self, split, batch)
        if split == "train" and self.trainer.global_step == POISONED_STEP:
            if where == "loss":
                return loss * float("nan")
            handle = None  # a finite loss, but an infinite gradient of one weight, once

            def infinite(grad: torch.Tensor) -> torch.Tensor:
                handle.remove()
                return grad + float("inf")

            handle = self.model.head.weight.register_hook(infinite)
        return loss

    monkeypatch.setattr(LitCharLM, "_step", step)


def run(tmp: Path, *args: str) -> dict:
    argv = [*TINY, f"out_dir={tmp}", "run_name=r", "logger.mode=disabled", "trainer.max_steps=20"]
    return train_command.main([*argv, "trainer.checkpoint_every_n_steps=4", *args])


@pytest.mark.parametrize("where", ["loss", "gradient"])
def test_a_nan_stops_the_run_naming_the_step_and_keeps_the_last_good_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    poison(monkeypatch, where)
    with pytest.raises(NonFiniteError, match=rf"step {POISONED_STEP} .*NaN or inf") as error:
        run(tmp_path)
    culprit = "the training loss" if where == "loss" else "the gradient of model.head.weight"
    assert culprit in str(error.value) and "trainer.nonfinite=skip" in str(error.value)
    last = torch.load(tmp_path / "r/checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] <= POISONED_STEP
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values())
    assert not (tmp_path / "r/results.json").exists()


def test_skip_drops_the_poisoned_batch_counts_it_and_finishes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    poison(monkeypatch, "loss")
    results = run(tmp_path, "trainer.nonfinite=skip")
    assert results["metrics"]["train/skipped_batches"] == 1.0
    assert json.loads((tmp_path / "r/results.json").read_text())["global_step"] == 20
    ckpt = torch.load(tmp_path / "r/checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())
