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
from hmrnn.run import job
from tests import helpers
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


def cli_fails(
    tmp: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, max_steps: int
) -> str:
    """Run the command line (``cli``) of a tiny run that must exit 1; its last stderr line."""
    import sys

    argv = [*TINY, f"out_dir={tmp}", "run_name=r", "logger.mode=disabled"]
    argv += [f"trainer.max_steps={max_steps}", "trainer.checkpoint_every_n_steps=4"]
    monkeypatch.setattr(sys, "argv", ["hmrnn.train", *argv])
    with pytest.raises(SystemExit) as stopped:
        train_command.cli()
    assert stopped.value.code == 1
    return capsys.readouterr().err.strip().splitlines()[-1]


def run(tmp: Path, *args: str) -> dict:
    argv = [*TINY, f"out_dir={tmp}", "run_name=r", "logger.mode=disabled", "trainer.max_steps=20"]
    return train_command.main([*argv, "trainer.checkpoint_every_n_steps=4", *args])


def as_if_stopped(run_dir: Path) -> None:
    """Make a finished run look stopped at its last checkpoint (a finished one is never
    resumed): its results.json is what marks it finished."""
    (run_dir / "results.json").unlink()


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
    as_if_stopped(tmp_path / "r")
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

    last.write_bytes(good[: len(good) // 2])  # half-written, and named: refused
    with pytest.raises(ConfigError, match=r"cannot read .*last.ckpt.*corrupt or half-written"):
        train_command.main([f"resume={last}", "logger.mode=disabled"])

    last.write_bytes(good)  # the data's vocabulary changed since the run started
    from datamodules.synthetic import SyntheticDataModule

    original = SyntheticDataModule.load

    def other_vocab(self):
        tokens, vocab = original(self)
        return tokens, type(vocab)(tuple(reversed(vocab.symbols)))

    monkeypatch.setattr(SyntheticDataModule, "load", other_vocab)
    with pytest.raises(ConfigError, match=r"vocabulary of .* differs from data=synthetic's"):
        train_command.main(resume)


@pytest.mark.parametrize("name", ["last", "best"])
def test_a_full_disk_while_checkpointing_stops_the_run_and_keeps_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    import errno

    from hmrnn.lit import checkpoint_io
    from hmrnn.lit.checkpoint_io import CheckpointWriteError

    real_save, writes = checkpoint_io.torch.save, []

    def disk_fills_up(checkpoint, f):
        if f.name.endswith(f".{name}.ckpt.tmp"):
            writes.append(checkpoint["global_step"])
            if len(writes) == 2:  # the second write of that file meets a full disk, halfway
                f.write(b"half a checkpoint")
                raise OSError(errno.ENOSPC, "No space left on device")
        real_save(checkpoint, f)

    monkeypatch.setattr(checkpoint_io.torch, "save", disk_fills_up)
    with pytest.raises(CheckpointWriteError, match=rf"No space left.*previous {name}.ckpt is"):
        run(tmp_path, "trainer.val_check_interval=5", "data.train_chars=60000")
    folder = tmp_path / "r" / "checkpoints"
    kept = torch.load(folder / f"{name}.ckpt", map_location="cpu", weights_only=True)
    assert kept["global_step"] == writes[0], "the file before the disk filled up, whole"
    checkpoint_io.verify(kept, folder / f"{name}.ckpt")
    assert not list(folder.glob(".*.tmp")), "no half-written file is left"


@pytest.mark.parametrize(("free_mb", "saved"), [(50.0, True), (0.5, False)])
def test_the_run_stops_before_the_disk_is_full(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    free_mb: float,
    saved: bool,
) -> None:
    """``trainer.min_free_mb``: W&B's writer fails silently on a full disk, so the run looks
    ahead; it saves once more when that still fits."""
    import shutil

    from hmrnn.lit import callbacks, resume

    real = shutil.disk_usage
    state = {"step": 0}

    class Step(callbacks.L.Callback):
        def on_train_batch_start(self, trainer, *args) -> None:
            state["step"] = trainer.global_step

    def disk_usage(path):
        usage = real(path)
        if state["step"] < 10:
            return usage
        return usage._replace(free=int(free_mb * 2**20))

    monkeypatch.setattr(resume.shutil, "disk_usage", disk_usage)
    original = job.build_trainer

    def with_step(config, run_dir):
        trainer, parts = original(config, run_dir)
        trainer.callbacks.insert(0, Step())
        return trainer, parts

    monkeypatch.setattr(job, "build_trainer", with_step)
    err = cli_fails(tmp_path, monkeypatch, capsys, max_steps=20)
    assert err.startswith(f"error: only {free_mb:.0f} MB are free on the file system of ")
    assert "trainer.min_free_mb=100" in err and f"resume={tmp_path / 'r'}" in err
    last = torch.load(tmp_path / "r/checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    if saved:
        assert "saved last.ckpt at step 12" in err and last["global_step"] == 12
    else:
        assert "last.ckpt is intact" in err and last["global_step"] == 8
    assert not (tmp_path / "r" / "results.json").exists()


def test_the_same_command_again_refuses_a_finished_run_or_other_settings(
    tmp_path: Path,
) -> None:
    from hmrnn.config import ConfigError

    run(tmp_path, "trainer.max_steps=8")
    with pytest.raises(ConfigError, match=r"holds a finished run \(results.json\); choose"):
        run(tmp_path, "trainer.max_steps=8")
    (tmp_path / "r" / "results.json").unlink()  # as if killed while testing
    with pytest.raises(
        ConfigError, match=r"holds a run with optim.lr=0.003, but this command sets 0.001; "
    ):
        run(tmp_path, "trainer.max_steps=8", "optim.lr=0.001")
    assert run(tmp_path, "trainer.max_steps=8")["global_step"] == 8  # the same: it continues

    # killed after writing log rows but before its first checkpoint: it starts over, and its log
    # holds each step once
    import shutil

    from tests.test_train import logged

    shutil.rmtree(tmp_path / "r" / "checkpoints")
    (tmp_path / "r" / "results.json").unlink()
    assert run(tmp_path, "trainer.max_steps=8")["global_step"] == 8
    assert all(len(values) == 1 for values in logged(tmp_path / "r").values())


# Rank 1 fails at step 5 (it raises, or hangs when the script's name says so) and notes the
# time in <script>.fault. Rank 0 connects to rank 1 only once rank 1 is ready to (<script>.ready):
# rank 0 starts rank 1 from scratch and waits at the rendezvous, which trainer.ddp_timeout_s
# bounds too, so on a busy machine rank 1's start-up alone could outlast the test's short
# timeout; the timeout is here for the failure at step 5.
FAULTY_RANK = """
import sys, time
from pathlib import Path
from lightning.pytorch.strategies import DDPStrategy
from hmrnn import train
from hmrnn.lit.module import LitCharLM

original = LitCharLM._step
setup_distributed = DDPStrategy.setup_distributed
ready = Path(sys.argv[0] + ".ready")

def step(self, split, batch):
    if split == "train" and self.trainer.global_rank == 1 and self.trainer.global_step == 5:
        Path(sys.argv[0] + ".fault").write_text(repr(time.time()))
        if "hang" in sys.argv[0]:
            time.sleep(3600)
        raise RuntimeError("injected failure on rank 1 at step 5")
    return original(self, split, batch)

def setup_when_every_rank_is_ready(self):
    ranks = getattr(self.launcher, "procs", None) or []  # the ranks this one started
    if not ranks:
        ready.touch()
    while ranks and not ready.exists() and all(p.poll() is None for p in ranks):
        time.sleep(0.05)
    setup_distributed(self)

LitCharLM._step = step
DDPStrategy.setup_distributed = setup_when_every_rank_is_ready
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
    import sys
    import time

    script = tmp_path / f"rank1_{fault}.py"
    script.write_text(FAULTY_RANK)
    args = [*TINY, f"out_dir={tmp_path}", "logger.mode=disabled", "trainer.max_steps=30"]
    args += ["trainer.devices=2", "trainer.strategy=ddp", "trainer.ddp_timeout_s=15"]
    started = time.time()
    result = helpers.run([sys.executable, str(script), *args], watch=[tmp_path])
    # bounded time: from the failure (start-up, however slow on a busy machine, is not counted)
    failed = Path(f"{script}.fault")
    took = time.time() - (float(failed.read_text()) if failed.is_file() else started)
    assert result.returncode != 0
    if fault == "crash":
        assert "injected failure on rank 1 at step 5" in result.stderr and took < 120
    else:
        assert "Timed out" in result.stderr and took < 15 + 120
    # rank 0 killed the others: wait while they go (one left behind stops changing: a stall)
    helpers.wait_until(
        lambda: alive_with(str(script)) == [],
        "the killed ranks to end",
        helpers.Progress(lambda: alive_with(str(script))),
        lambda: True,
        lambda: f"left behind: {alive_with(str(script))}",
    )
    assert alive_with(str(script)) == [], "no rank is left behind"


def test_a_full_disk_while_writing_the_logs_stops_with_one_sentence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import errno

    from lightning.fabric.loggers.csv_logs import _ExperimentWriter

    original = _ExperimentWriter.save
    calls = {"n": 0}

    def disk_fills_up(self) -> None:
        calls["n"] += 1
        if calls["n"] > 3:
            raise OSError(errno.ENOSPC, "No space left on device", self.metrics_file_path)
        original(self)

    monkeypatch.setattr(_ExperimentWriter, "save", disk_fills_up)
    err = cli_fails(tmp_path, monkeypatch, capsys, max_steps=60)
    assert "no space left on the device while writing" in err and "metrics.csv" in err
    assert f"resume={tmp_path / 'r'}" in err
    last = torch.load(tmp_path / "r/checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values())


def flip_a_bit(path: Path) -> None:
    """Damage a checkpoint as a bad disk or copy would: one bit in the middle (tensor data,
    which torch's reader loads without noticing)."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))


def test_a_damaged_last_checkpoint_is_detected_and_the_previous_one_resumes_bit_identically(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from hmrnn.config import ConfigError
    from hmrnn.lit.checkpoint_io import CheckpointError, read_checkpoint
    from tests.test_train import assert_same_log, assert_same_parameters, step_of

    run(tmp_path / "whole")  # 20 steps, last.ckpt every 4
    run(tmp_path / "cut", "trainer.max_steps=12")
    as_if_stopped(tmp_path / "cut" / "r")
    folder = tmp_path / "cut" / "r" / "checkpoints"
    assert (step_of(folder / "last.ckpt"), step_of(folder / "previous.ckpt")) == (12, 8)
    flip_a_bit(folder / "last.ckpt")
    with pytest.raises(CheckpointError, match=r"last.ckpt is corrupt: .* sha256 digest"):
        read_checkpoint(folder / "last.ckpt")
    capsys.readouterr()
    train_command.main([f"resume={tmp_path / 'cut' / 'r'}", "trainer.max_steps=20"])
    err = capsys.readouterr().err
    assert "last.ckpt is corrupt" in err and "resuming from" in err and "previous.ckpt" in err
    assert_same_parameters(folder / "last.ckpt", tmp_path / "whole/r/checkpoints/last.ckpt")
    assert step_of(folder / "previous.ckpt") == 16, "the damaged file was not kept as previous"
    assert_same_log(tmp_path / "cut" / "r", tmp_path / "whole" / "r")
    assert (folder / "last.ckpt.damaged").is_file()

    flip_a_bit(folder / "last.ckpt")  # both damaged: refused, naming both
    flip_a_bit(folder / "previous.ckpt")
    with pytest.raises(ConfigError, match=r"no usable checkpoint: .*last.ckpt.*previous.ckpt"):
        train_command.main([f"resume={tmp_path / 'cut' / 'r'}"])


def tmpfs_in_a_namespace() -> list[str] | None:
    """The ``unshare`` command that gives a process a private mount namespace in which it may
    mount a tmpfs (as root, or through a user namespace), or None where neither works."""
    import shutil

    if shutil.which("unshare") is None:
        return None
    for command in (["unshare", "--mount"], ["unshare", "--user", "--map-root-user", "--mount"]):
        probe = "d=$(mktemp -d) && mount -t tmpfs -o size=1m tmpfs $d && umount $d && rmdir $d"
        try:
            result = helpers.run([*command, "sh", "-c", probe])
        except (OSError, AssertionError):  # AssertionError: it stalled
            continue
        if result.returncode == 0:
            return command
    return None


DISK_FILLS_UP = """
set -u
mount -t tmpfs -o size=8m tmpfs "$DISK"
"$PYTHON" -m hmrnn.train "$@" out_dir="$DISK" 2> "$OUT/first.err" > /dev/null &
pid=$!
while [ ! -f "$DISK/r/checkpoints/last.ckpt" ] && kill -0 $pid 2> /dev/null; do sleep 0.05; done
# it is training (last.ckpt is written at a batch end), with a checkpoint to keep: fill the disk
dd if=/dev/zero of="$DISK/filler" bs=4k 2> /dev/null
wait $pid; echo $? > "$OUT/first.rc"
cp -a "$DISK/r" "$OUT/at-failure"
rm "$DISK/filler"  # space freed: continue as the error message says
"$PYTHON" -m hmrnn.train resume="$DISK/r" 2> "$OUT/second.err" > /dev/null
echo $? > "$OUT/second.rc"
cp -a "$DISK/r" "$OUT/resumed"
"""


@pytest.mark.slow
@pytest.mark.skipif(tmpfs_in_a_namespace() is None, reason="cannot mount a tmpfs (unshare)")
def test_a_real_disk_filling_up_under_wandb_stops_cleanly_and_the_run_continues_identical(
    tmp_path: Path,
) -> None:
    """A tiny tmpfs filled up while the run (W&B offline, CSV, checkpoints) writes to it: the
    run stops with one sentence as the last line, its last checkpoint whole; after freeing
    space, ``resume=`` ends bit-identical to a run on a roomy disk."""
    import os
    import sys

    from hmrnn.lit.checkpoint_io import read_checkpoint
    from tests.test_train import assert_same_log, assert_same_parameters, step_of

    args = [*TINY, "run_name=r", "logger.mode=offline", "trainer.min_free_mb=0"]
    args += ["trainer.max_steps=120", "trainer.checkpoint_every_n_steps=4"]
    args += ["data.train_chars=60000"]
    env = {k: v for k, v in os.environ.items() if k != "WANDB_MODE"}
    roomy = [sys.executable, "-m", "hmrnn.train", *args, f"out_dir={tmp_path / 'roomy'}"]
    whole = helpers.run(roomy, env=env, watch=[tmp_path / "roomy"])
    assert whole.returncode == 0, whole.stderr[-3000:]
    disk, out = tmp_path / "disk", tmp_path / "out"
    disk.mkdir()
    out.mkdir()
    script = tmp_path / "fill.sh"
    script.write_text(DISK_FILLS_UP)
    env |= {"DISK": str(disk), "OUT": str(out), "PYTHON": sys.executable}
    # the tmpfs is private to the script's namespace: its CPU time and $OUT show its progress
    filling = [*tmpfs_in_a_namespace(), "sh", str(script), *args]
    helpers.run(filling, env=env, watch=[out]).check_returncode()
    first_err = (out / "first.err").read_text().strip().splitlines()
    assert (out / "first.rc").read_text().strip() == "1", first_err[-30:]
    assert first_err[-1].startswith("error: "), first_err[-30:]
    assert "No space left on device" in first_err[-1] or "no space left" in first_err[-1]
    assert "resume=" in first_err[-1]
    failed = out / "at-failure" / "checkpoints"
    read_checkpoint(failed / "last.ckpt")  # whole, its digest matches
    assert 0 < step_of(failed / "last.ckpt") < 120
    assert not list(failed.glob(".*.tmp")), "no half-written file is left"
    assert list((out / "at-failure" / "wandb").glob("offline-run-*"))
    assert (out / "second.rc").read_text().strip() == "0", (out / "second.err").read_text()
    resumed = out / "resumed" / "checkpoints"
    roomy = tmp_path / "roomy" / "r" / "checkpoints"
    assert_same_parameters(resumed / "last.ckpt", roomy / "last.ckpt")
    assert_same_parameters(resumed / "best.ckpt", roomy / "best.ckpt")
    assert_same_log(out / "resumed", tmp_path / "roomy" / "r")
