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


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["data.valid_chars=10"], r"the validation split holds 10 symbols, too few for 8 rows"),
        (["data.eval_batch_size=4000", "data.test_chars=3000"], r"the test split holds 3,000"),
        (["trainer.val_check_interval=500"], r"trainer.val_check_interval=500 exceeds the 200"),
    ],
)
def test_data_too_short_for_the_batching_is_a_clear_error_before_any_work(
    tmp_path: Path, args: list[str], message: str
) -> None:
    from hmrnn.config import ConfigError

    with pytest.raises(ConfigError, match=message):
        run(tmp_path, *args)
    assert not (tmp_path / "r").exists(), "nothing is written"


def test_a_stuck_boundary_detector_is_reported_with_its_layer() -> None:
    import dataclasses

    from hmrnn.compose import compose

    config, _ = compose(["experiment=demo", "model.hidden_size=16"])
    module = LitCharLM(dataclasses.asdict(config), vocab_size=12)
    assert module.check_stuck([0.6, 0.0, 0.0]) == []
    assert module.check_stuck([0.5, 0.0, 0.0]) == []
    (warning,) = module.check_stuck([0.7, 0.0, 0.0])  # the third validation in a row
    assert warning.startswith("layer 2's boundary detector never fires")
    assert module.check_stuck([1.0, 0.2, 0.0]) == []  # layer 2 moved
    module.check_stuck([1.0, 0.2, 0.0])
    (warning,) = module.check_stuck([1.0, 0.3, 0.0])
    assert warning.startswith("layer 1's boundary detector fires at every step")
    fixed, _ = compose(["experiment=demo", "model=fixed_boundary", "model.hidden_size=16"])
    imposed = LitCharLM(dataclasses.asdict(fixed), vocab_size=12, delimiters=[0])
    assert [imposed.check_stuck([1.0, 0.0, 0.0]) for _ in range(4)] == [[]] * 4


def test_an_unwritable_data_folder_is_a_clear_error_before_any_download(tmp_path: Path) -> None:
    from hmrnn.config import ConfigError

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")  # no one, root included, can create a folder under it
    with pytest.raises(ConfigError, match=r"data.root=.*a-file/data': cannot write .*writable"):
        run(tmp_path, "data=ptb", f"data.root={blocker / 'data'}")
    assert not (tmp_path / "r").exists()


def test_resuming_from_a_foreign_corrupt_or_mismatched_checkpoint_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hmrnn.config import ConfigError

    run(tmp_path, "trainer.max_steps=8")
    last = tmp_path / "r" / "checkpoints" / "last.ckpt"
    good = last.read_bytes()
    resume = [f"resume={tmp_path / 'r'}", "logger.mode=disabled"]

    other = tmp_path / "other"  # a checkpoint of a different model, copied into this run
    train_command.main(
        [
            *TINY,
            f"out_dir={other}",
            "run_name=o",
            "logger.mode=disabled",
            "trainer.max_steps=4",
            "model.hidden_size=24",
        ]
    )
    last.write_bytes((other / "o" / "checkpoints" / "last.ckpt").read_bytes())
    with pytest.raises(
        ConfigError, match=r"model.hidden_size=24, but the run's config.yaml says 32"
    ):
        train_command.main(resume)

    last.write_bytes(good[: len(good) // 2])  # half-written
    with pytest.raises(ConfigError, match=r"cannot read .*last.ckpt.*corrupt or half-written"):
        train_command.main(resume)

    last.write_bytes(good)  # the data's vocabulary changed since the run started
    from datamodules.synthetic import SyntheticDataModule

    original = SyntheticDataModule.load

    def other_vocab(self):
        tokens, vocab = original(self)
        return tokens, type(vocab)(tuple(reversed(vocab.symbols)))

    monkeypatch.setattr(SyntheticDataModule, "load", other_vocab)
    with pytest.raises(ConfigError, match=r"vocabulary of .* differs from data=synthetic's"):
        train_command.main(resume)


def test_a_full_disk_while_checkpointing_stops_the_run_and_keeps_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    import lightning as L

    from hmrnn.lit.callbacks import CheckpointWriteError

    original = L.Trainer.save_checkpoint

    def disk_fills_up(self, filepath, *args, **kwargs):
        if self.global_step >= 10 and "last" in str(filepath):
            Path(filepath).write_bytes(b"half a checkpoint")  # what a full disk leaves behind
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, filepath, *args, **kwargs)

    monkeypatch.setattr(L.Trainer, "save_checkpoint", disk_fills_up)
    with pytest.raises(CheckpointWriteError, match=r"No space left on device.*previous last.ckpt"):
        run(tmp_path)
    folder = tmp_path / "r" / "checkpoints"
    last = torch.load(folder / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 8, "the checkpoint before the disk filled up, whole"
    assert not list(folder.glob(".*.tmp")), "no half-written file is left"


FAULTY_RANK = """
import sys, time
from hmrnn import train
from hmrnn.lit.module import LitCharLM

original = LitCharLM._step

def step(self, split, batch):
    if split == "train" and self.trainer.global_rank == 1 and self.trainer.global_step == 5:
        if "hang" in sys.argv[0]:
            time.sleep(3600)
        raise RuntimeError("injected failure on rank 1 at step 5")
    return original(self, split, batch)

LitCharLM._step = step
train.cli()
"""


def alive_with(marker: str) -> list[int]:
    """Pids of live (not zombie) processes whose command line mentions ``marker``."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if not proc.name.isdigit():
                continue
            command = (proc / "cmdline").read_bytes().decode(errors="ignore")
            state = (proc / "stat").read_text().rsplit(")", 1)[-1].split()[0]
        except OSError:
            continue
        if marker in command and state != "Z":
            pids.append(int(proc.name))
    return pids


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["crash", "hang"])
def test_one_ddp_rank_failing_ends_the_whole_job_in_bounded_time(
    tmp_path: Path, fault: str
) -> None:
    import subprocess
    import sys
    import time

    script = tmp_path / f"rank1_{fault}.py"
    script.write_text(FAULTY_RANK)
    args = [*TINY, f"out_dir={tmp_path}", "logger.mode=disabled", "trainer.max_steps=30"]
    args += ["trainer.devices=2", "trainer.strategy=ddp", "trainer.ddp_timeout_s=15"]
    started = time.time()
    result = subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, timeout=240
    )
    took = time.time() - started
    assert result.returncode != 0
    if fault == "crash":
        assert "injected failure on rank 1 at step 5" in result.stderr and took < 120
    else:
        assert "Timed out" in result.stderr and took < 15 + 120
    time.sleep(1)
    assert alive_with(str(script)) == [], "no rank is left behind"


def test_a_full_disk_while_writing_the_logs_stops_with_one_sentence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import errno
    import sys

    from lightning.fabric.loggers.csv_logs import _ExperimentWriter

    original = _ExperimentWriter.save
    calls = {"n": 0}

    def disk_fills_up(self) -> None:
        calls["n"] += 1
        if calls["n"] > 3:
            raise OSError(errno.ENOSPC, "No space left on device", self.metrics_file_path)
        original(self)

    monkeypatch.setattr(_ExperimentWriter, "save", disk_fills_up)
    argv = [*TINY, f"out_dir={tmp_path}", "run_name=r", "logger.mode=disabled"]
    argv += ["trainer.max_steps=60", "trainer.checkpoint_every_n_steps=4"]
    monkeypatch.setattr(sys, "argv", ["hmrnn.train", *argv])
    with pytest.raises(SystemExit) as stopped:
        train_command.cli()
    assert stopped.value.code == 1
    err = capsys.readouterr().err
    assert "no space left on the device while writing" in err and "metrics.csv" in err
    assert "resume=<out_dir>/r" in err
    last = torch.load(tmp_path / "r/checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values())
