"""The training command end to end, through the real entry point (subprocesses).

A tiny HM-LSTM on a small synthetic corpus: composition, training, validation, test,
checkpoints, results.json, CSV and offline W&B files; reloading; SIGKILL / SIGTERM and resume;
DDP on two CPU processes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from datamodules import build_datamodule
from hmrnn.evaluate import run_split
from hmrnn.lit.handwriting import LitHandwriting
from hmrnn.lit.module import LitCharLM
from tests.helpers import Watched, run

TINY = [
    "experiment=demo",
    "model.hidden_size=32",
    "model.output_size=32",
    "model.embedding_dim=16",
    "data.train_chars=40000",
    "data.valid_chars=8000",
    "data.test_chars=8000",
    "data.batch_size=8",
    "data.bptt=25",
    "trainer.val_check_interval=30",
    "trainer.enable_progress_bar=false",
    "trainer.log_every_n_steps=5",
    "trainer.accelerator=cpu",
]


def train(tmp: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run the training command; a resume takes the run's own settings (no TINY on top)."""
    env = {k: v for k, v in os.environ.items() if k != "WANDB_MODE"}  # logger.mode decides
    resuming = any(a.startswith("resume=") for a in args)
    base = [] if resuming else [*TINY, f"out_dir={tmp}"]
    cmd = [sys.executable, "-m", "hmrnn.train", *base, *args]
    result = run(cmd, env=env, watch=[tmp])  # no total timeout: it fails when it stalls
    if check and result.returncode != 0:
        raise AssertionError(f"{cmd} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


def state_dict(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def assert_same_parameters(a: Path, b: Path) -> None:
    sa, sb = state_dict(a), state_dict(b)
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), f"{key} differs"


def logged(run_dir: Path) -> dict[tuple[int, str], list[str]]:
    """The training and validation BPC rows of a run's CSV log, by (step, metric)."""
    import csv

    rows: dict[tuple[int, str], list[str]] = {}
    with (run_dir / "csv" / "metrics.csv").open(newline="") as f:
        for row in csv.DictReader(f):
            for key in ("train/bpc", "val/bpc"):
                if row.get(key):
                    rows.setdefault((int(row["step"]), key), []).append(row[key])
    return rows


def assert_same_log(a: Path, b: Path) -> None:
    """Each step's BPC logged once, and equal to the other run's: a stop or kill neither loses
    nor repeats rows of the CSV log."""
    la, lb = logged(a), logged(b)
    assert set(la) == set(lb), f"steps only in one log: {sorted(set(la) ^ set(lb))}"
    for key in la:
        assert la[key] == lb[key], f"{key}: {la[key]} vs {lb[key]}"


# ----------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("runs")
    train(tmp, "run_name=e2e", "trainer.max_steps=60", "logger.mode=offline")
    return tmp / "e2e"


def test_run_writes_config_checkpoints_logs_and_results(finished_run: Path) -> None:
    run = finished_run
    assert "hidden_size: 32" in (run / "config.yaml").read_text()
    assert (run / "checkpoints" / "best.ckpt").is_file()
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert not list(run.glob("checkpoints/.*.tmp")), "no temporary file may be left behind"
    csv = (run / "csv" / "metrics.csv").read_text().splitlines()
    header = csv[0].split(",")
    assert "val/bpc" in header and "train/bpc" in header and "train/z_rate_l1" in header
    diag = ("z_rate", "sz_mean", "sz_std", "sz_linear", "grad_sz", "grad_masks", "grad_top_down")
    assert {f"diag/{k}_l{l}" for k in diag for l in (1, 2)} | {"diag/slope"} <= set(header)
    assert len(csv) > 5
    offline = list((run / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(offline) == 1 and offline[0].stat().st_size > 0

    results = json.loads((run / "results.json").read_text())
    metrics = results["metrics"]
    assert 1.0 < metrics["test/bpc"] < 4.6  # between the entropy rate and uniform over 28
    assert results["monitor"] == "val/bpc"
    hparams = (finished_run / "csv" / "hparams.yaml").read_text()
    assert f"parameters: {results['parameters']}" in hparams  # logged for size comparisons
    assert results["best_val_bpc"] == pytest.approx(min_val_bpc(csv), abs=1e-6)
    assert results["parameters"] > 10_000 and results["global_step"] == 60
    assert results["config"]["model"]["hidden_size"] == 32
    assert results["reference_rates"]["entropy_rate"] == pytest.approx(1.1137, abs=1e-4)
    assert set(results["boundaries"]) >= {"l1/word/tol0", "l2/phrase/tol1"}
    assert results["git_commit"] and results["hardware"]["torch"] == torch.__version__


def min_val_bpc(csv: list[str]) -> float:
    header = csv[0].split(",")
    col = header.index("val/bpc")
    values = [float(row.split(",")[col]) for row in csv[1:] if row.split(",")[col]]
    return min(values)


def test_load_from_checkpoint_reproduces_the_test_bpc(finished_run: Path) -> None:
    results = json.loads((finished_run / "results.json").read_text())
    module = LitCharLM.load_from_checkpoint(finished_run / "checkpoints" / "best.ckpt")
    dm = build_datamodule(module.config.data)
    bpc, bounds, seen = run_split(module.model, dm, "test")
    assert bpc == pytest.approx(results["metrics"]["test/bpc"], abs=1e-5)
    assert seen.sum() > 7000 and bounds.shape[1] == 3
    assert module.hparams.vocab == list(dm.vocab.symbols)


def test_bad_configuration_fails_before_any_work(tmp_path: Path) -> None:
    result = train(tmp_path, "model.hiden_size=4", check=False)
    assert result.returncode == 2
    assert "unknown key 'model.hiden_size'" in result.stderr
    assert "did you mean 'model.hidden_size'" in result.stderr
    assert not any(tmp_path.iterdir()), "nothing may be written"


# -------------------------------------------------------------------------- kill / resume
RESUME = [
    "trainer.max_steps=150",
    "trainer.checkpoint_every_n_steps=7",
    "model.boundary=bernoulli",
    "logger.mode=disabled",
    "data.train_chars=60000",
]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("runs")
    train(tmp, "run_name=whole", *RESUME)
    return tmp / "whole" / "checkpoints" / "last.ckpt"


def start_and_wait_for_checkpoint(tmp: Path) -> tuple[Watched, Path]:
    """The run ``tmp/cut``, started, once it has saved its first ``last.ckpt``: from a training
    batch end, so its signal handlers are in place (they are set at the training start) and a
    signal sent now is handled at the next batch end where a resume is exact. The caller ends it
    (in a ``with`` block, which kills it if the test fails first)."""
    cmd = [sys.executable, "-m", "hmrnn.train", *TINY, f"out_dir={tmp}", "run_name=cut", *RESUME]
    proc = Watched(cmd, watch=[tmp])
    return proc, wait_for(tmp / "cut" / "checkpoints" / "last.ckpt", proc)


def wait_for(path: Path, proc: Watched) -> Path:
    """``path`` once the running ``proc`` has written it: the test fails if ``proc`` ends first
    (its stderr in the message) or stalls, never because a number of seconds passed."""
    proc.wait_until(path.exists, f"{path} to be written")
    return path


def resume_ends_as_uninterrupted(tmp: Path, last: Path, uninterrupted: Path) -> None:
    """``resume=`` the stopped run ``tmp/cut``: it ends with the parameters and the CSV log of the
    run that never stopped."""
    train(tmp, f"resume={tmp / 'cut'}")
    assert_same_parameters(last, uninterrupted)
    assert_same_log(tmp / "cut", uninterrupted.parents[1])


def step_of(path: Path) -> int:
    return torch.load(path, map_location="cpu", weights_only=True)["global_step"]


@pytest.mark.slow
def test_sigkill_then_resume_ends_bit_identical(tmp_path: Path, uninterrupted: Path) -> None:
    proc, last = start_and_wait_for_checkpoint(tmp_path)
    with proc:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    killed_at = step_of(last)
    assert 0 < killed_at < 150 and killed_at % 7 == 0, "killed mid-run, after a periodic save"
    resume_ends_as_uninterrupted(tmp_path, last, uninterrupted)
    assert step_of(last) == 150


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_exits_130_without_testing_and_resumes(
    tmp_path: Path, uninterrupted: Path
) -> None:
    proc, last = start_and_wait_for_checkpoint(tmp_path)
    with proc:  # it is training (see start_and_wait_for_checkpoint): no time to give it
        proc.send_signal(signal.SIGINT)
        proc.wait("the run to stop after SIGINT")
        stderr = proc.stderr
    assert proc.returncode == 130, stderr[-2000:]
    assert "stopped by SIGINT" in stderr and "resume=" in stderr
    assert not (tmp_path / "cut" / "results.json").exists(), "a stopped run is not tested"
    assert step_of(last) < 150
    resume_ends_as_uninterrupted(tmp_path, last, uninterrupted)


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_exits_and_resumes_bit_identical(
    tmp_path: Path, uninterrupted: Path
) -> None:
    proc, last = start_and_wait_for_checkpoint(tmp_path)
    first = step_of(last)
    with proc:  # it is training (see start_and_wait_for_checkpoint): no time to give it
        proc.send_signal(signal.SIGTERM)
        proc.wait("the run to stop after SIGTERM")
        stderr = proc.stderr
    assert proc.returncode == 143, stderr[-2000:]
    assert "resume=" in stderr
    stopped_at = step_of(last)
    assert first <= stopped_at < 150
    resume_ends_as_uninterrupted(tmp_path, last, uninterrupted)


# A training whose process kills itself (SIGKILL) at a chosen point: HMRNN_KILL is
# "last:N" / "best:N" (halfway through writing that checkpoint file the N-th time) or
# "validation:N:B" (at batch B of the N-th validation).
KILLER = """
import os, signal, sys
import torch
from hmrnn import train
from hmrnn.lit.checkpoint_io import AtomicCheckpointIO
from hmrnn.lit.module import LitCharLM

where, *at = os.environ["HMRNN_KILL"].split(":")
at = [int(a) for a in at]
seen = {"writes": 0, "validations": 0}
save = AtomicCheckpointIO.save_checkpoint

def save_checkpoint(self, checkpoint, path, storage_options=None):
    if os.path.basename(path) == where + ".ckpt":
        seen["writes"] += 1
        if seen["writes"] == at[0]:
            tmp = os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".tmp")
            torch.save(checkpoint, tmp)
            data = open(tmp, "rb").read()
            with open(tmp, "wb") as f:  # what a kill halfway through the write leaves
                f.write(data[: len(data) // 2])
                f.flush()
                os.fsync(f.fileno())
            os.kill(os.getpid(), signal.SIGKILL)
    return save(self, checkpoint, path, storage_options)

validation_step = LitCharLM.validation_step

def killing_validation_step(self, batch, batch_idx):
    if batch_idx == 0:
        seen["validations"] += 1
    if seen["validations"] == at[0] and batch_idx == at[1]:
        os.kill(os.getpid(), signal.SIGKILL)
    return validation_step(self, batch, batch_idx)

AtomicCheckpointIO.save_checkpoint = save_checkpoint
if where == "validation":
    LitCharLM.validation_step = killing_validation_step
train.cli()
"""


def cut_command(tmp: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "hmrnn.train",
        *TINY,
        f"out_dir={tmp}",
        "run_name=cut",
        *RESUME,
        *extra,
    ]


@pytest.mark.slow
@pytest.mark.parametrize("kill", ["last:3", "best:2", "validation:3:2"])
def test_sigkill_while_writing_a_checkpoint_or_validating_then_the_same_command_ends_identical(
    tmp_path: Path, uninterrupted: Path, kill: str
) -> None:
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    command = cut_command(tmp_path)
    env = {**os.environ, "HMRNN_KILL": kill}
    killed = run([sys.executable, str(script), *command[3:]], env=env, watch=[tmp_path], text=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    folder = tmp_path / "cut" / "checkpoints"
    where = kill.split(":")[0]
    if where != "validation":  # the half-written file is there, the one before it whole
        assert (folder / f".{where}.ckpt.tmp").is_file()
    steps = {
        name: step_of(folder / name)
        for name in ("last.ckpt", "best.ckpt")
        if (folder / name).is_file()
    }
    assert 0 < steps["last.ckpt"] < 150
    # the same command again (a plain restart) continues the run
    again = run(command, watch=[tmp_path])
    assert again.returncode == 0, again.stderr[-3000:]
    assert "holds this run's checkpoint: continuing it" in again.stderr
    assert_same_parameters(folder / "last.ckpt", uninterrupted)
    assert_same_parameters(folder / "best.ckpt", uninterrupted.with_name("best.ckpt"))
    assert not list(folder.glob(".*.tmp")), "the half-written file was replaced"
    assert_same_log(tmp_path / "cut", uninterrupted.parents[1])
    assert (tmp_path / "cut" / "results.json").is_file()


@pytest.mark.slow
def test_sigkill_at_random_moments_then_the_same_command_ends_identical(
    tmp_path: Path, uninterrupted: Path
) -> None:
    """Three kills at random moments (start-up, training, validation, checkpointing alike), each
    followed by the same command, then the run to its end: the parameters equal the run that
    was never interrupted. The seed is printed so that a failure can be replayed.

    A moment is an amount of CPU time used by the run (about its wall time on a quiet machine),
    so that the kills fall at the same points of its work however busy the machine is."""
    import random

    seed = int(os.environ.get("HMRNN_KILL_SEED", time.time_ns() % 10**6))
    print(f"HMRNN_KILL_SEED={seed}")
    rng = random.Random(seed)
    command = cut_command(tmp_path)
    kills = []
    for _ in range(3):
        delay = rng.uniform(2.0, 12.0)  # CPU seconds of the run
        with Watched(command, watch=[tmp_path]) as proc:
            proc.wait_until(
                lambda: proc.poll() is not None or proc.cpu_seconds() >= delay,  # noqa: B023
                f"the run to use {delay:.1f} s of CPU time",
            )
            if proc.poll() is not None:
                break  # it finished before the kill
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        last = tmp_path / "cut" / "checkpoints" / "last.ckpt"
        kills.append((round(delay, 1), step_of(last) if last.is_file() else None))
    print(f"killed after (CPU seconds, step of last.ckpt): {kills}")
    if not (tmp_path / "cut" / "results.json").is_file():
        final = run(command, watch=[tmp_path])
        assert final.returncode == 0, final.stderr[-3000:]
    assert_same_parameters(tmp_path / "cut" / "checkpoints" / "last.ckpt", uninterrupted)
    assert_same_log(tmp_path / "cut", uninterrupted.parents[1])
    results = json.loads((tmp_path / "cut" / "results.json").read_text())
    assert results["global_step"] == 150


@pytest.mark.slow
def test_slurm_sigusr1_saves_requeues_and_the_requeued_job_continues_identical(
    tmp_path: Path, uninterrupted: Path
) -> None:
    """As in a job with ``#SBATCH --requeue --signal=B:USR1@120``: SIGUSR1 before the time
    limit saves and calls ``scontrol requeue``; SLURM restarts the same command with the same
    job id, which continues the run (its folder is named after the job)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    scontrol.write_text('#!/bin/sh\necho "$@" >> "$SCONTROL_LOG"\n')
    scontrol.chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "SCONTROL_LOG": str(tmp_path / "scontrol.log"),
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NAME": "hmrnn",
        "SLURM_NTASKS": "1",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": "0",
        "SLURM_NODELIST": "localhost",
    }
    command = [a for a in cut_command(tmp_path) if a != "run_name=cut"]
    with Watched(command, env=env, watch=[tmp_path], text=False) as proc:
        last = wait_for(tmp_path / "demo-hmlstm-slurm4242" / "checkpoints" / "last.ckpt", proc)
        proc.send_signal(signal.SIGUSR1)
        proc.wait("the job to stop after SIGUSR1")
        stderr = proc.stderr
    assert proc.returncode == 128 + signal.SIGUSR1, stderr.decode()[-3000:]
    assert "stopped by SIGUSR1; requeued SLURM job 4242" in stderr.decode()
    assert (tmp_path / "scontrol.log").read_text() == "requeue 4242\n"
    assert step_of(last) < 150
    requeued = run(command, env={**env, "SLURM_RESTART_COUNT": "1"}, watch=[tmp_path])
    assert requeued.returncode == 0, requeued.stderr[-3000:]
    assert "holds this run's checkpoint: continuing it" in requeued.stderr
    assert_same_parameters(last, uninterrupted)
    assert_same_log(last.parents[1], uninterrupted.parents[1])


# ----------------------------------------------------------------------------------- DDP
@pytest.mark.slow
def test_two_ddp_processes_reach_the_validation_bpc_of_one(tmp_path: Path) -> None:
    common = ["trainer.max_steps=30", "logger.mode=disabled", "trainer.val_check_interval=30"]
    train(tmp_path / "one", *common)
    # no run_name: every rank must still pick the same folder
    train(tmp_path / "two", *common, "trainer.devices=2", "trainer.strategy=ddp")
    (one_dir,) = (tmp_path / "one").iterdir()
    (two_dir,) = (tmp_path / "two").iterdir()
    one_run = json.loads((one_dir / "results.json").read_text())
    two_run = json.loads((two_dir / "results.json").read_text())
    assert (one_run["world_size"], two_run["world_size"]) == (1, 2)
    one, two = one_run["metrics"], two_run["metrics"]
    print(f"val/bpc: 1 process {one['val/bpc']:.7f}, 2 processes {two['val/bpc']:.7f}")
    assert one["val/bpc"] == pytest.approx(two["val/bpc"], abs=1e-5)
    assert one["test/bpc"] == pytest.approx(two["test/bpc"], abs=1e-5)
    assert one["val/bpc"] != pytest.approx(4.807, abs=0.05)  # it trained: not uniform over 28


@pytest.mark.slow
def test_ddp_sigterm_then_resume_ends_bit_identical(tmp_path: Path) -> None:
    """Two processes: each rank's carried state (its rows of the batch), random generators (each
    rank its own) and log window survive the stop, so the resumed job ends as the uninterrupted
    one."""
    common = [*RESUME[:-1], "trainer.max_steps=60", "trainer.devices=2", "trainer.strategy=ddp"]
    train(tmp_path, "run_name=whole", *common)
    cmd = [sys.executable, "-m", "hmrnn.train", *TINY, f"out_dir={tmp_path}", "run_name=cut"]
    with Watched([*cmd, *common], watch=[tmp_path], text=False) as proc:
        last = wait_for(tmp_path / "cut" / "checkpoints" / "last.ckpt", proc)
        proc.send_signal(signal.SIGTERM)  # rank 0 only: the ranks agree to stop together
        proc.wait("the job to stop after SIGTERM")
        stderr = proc.stderr
    assert proc.returncode == 143, stderr.decode()[-3000:]
    assert step_of(last) < 60
    train(tmp_path, f"resume={tmp_path / 'cut'}")
    whole = tmp_path / "whole" / "checkpoints" / "last.ckpt"
    assert_same_parameters(last, whole)
    assert_same_log(tmp_path / "cut", tmp_path / "whole")
    # the ranks draw their own Bernoulli noise: their generators differ
    ranks = torch.load(last, weights_only=True)["callbacks"]["RNGState"]["ranks"]
    assert len(ranks) == 2 and not torch.equal(ranks[0]["torch"], ranks[1]["torch"])


SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.mark.skipif(not (SHARED / "iam-ondb").is_dir(), reason="../shared/data/iam-ondb is absent")
def test_handwriting_run_end_to_end(tmp_path: Path) -> None:
    args = [
        "experiment=iam_ondb_small",
        f"data.local_dir={SHARED / 'iam-ondb' / 'sample'}",
        "data.iam_min_points=100",
        f"data.root={tmp_path / 'data'}",
        "trainer.max_steps=2",
        "trainer.val_check_interval=1.0",
        "trainer.limit_val_batches=1",
        f"out_dir={tmp_path}",
        "run_name=hw",
        "logger.mode=disabled",
        "trainer.enable_progress_bar=false",
    ]
    env = {k: v for k, v in os.environ.items() if k != "WANDB_MODE"}
    result = run([sys.executable, "-m", "hmrnn.train", *args], env=env, watch=[tmp_path])
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "hw" / "results.json").read_text())
    assert results["metrics"]["test/ll"] < 0 and "val/ll" in results["metrics"]
    assert results["monitor"] == "val/ll" and "best_val_bpc" not in results
    assert results["best_val_ll"] == pytest.approx(results["metrics"]["val/ll"], abs=1e-4)
    module = LitHandwriting.load_from_checkpoint(tmp_path / "hw" / "checkpoints" / "best.ckpt")
    assert len(module.hparams.mean) == 2 and module.hparams.std[0] > 0
    # sampling draws to PNG and SVG, reproducibly for a seed
    from hmrnn.generate import main as generate

    ckpt = str(tmp_path / "hw" / "checkpoints" / "best.ckpt")
    first = generate([ckpt, "length=60", "seed=4", f"out={tmp_path / 's1'}"])
    second = generate([ckpt, "length=60", "seed=4", f"out={tmp_path / 's2'}"])
    assert [p.suffix for p in first] == [".png", ".svg", ".png", ".svg"]
    assert first[1].read_text() == second[1].read_text()
    assert "<polyline" in first[1].read_text() and first[0].stat().st_size > 1000


@pytest.mark.parametrize("model", ["hmlstm", "lstm"])
def test_layer_norm_models_train_end_to_end(tmp_path: Path, model: str) -> None:
    """The paper's setups use layer norm: the HM-LSTM and the LN-LSTM baseline with it train
    through the hand-written loop (and its C++ cell where it builds), validate, and test."""
    args = [f"model={model}", "model.layer_norm=true", "run_name=ln", "trainer.max_steps=40"]
    train(tmp_path, *args, "logger.mode=disabled")
    metrics = json.loads((tmp_path / "ln" / "results.json").read_text())["metrics"]
    # 40 steps of a tiny model learn little (the HM-LSTM with layer norm starts slowest); the
    # numbers must be real and no worse than guessing among the 27 symbols (log2 27 = 4.75)
    for split in ("train", "val", "test"):
        assert 0 < metrics[f"{split}/bpc"] < 4.8, (split, metrics[f"{split}/bpc"])


def test_bf16_mixed_precision_trains_end_to_end(tmp_path: Path) -> None:
    """``trainer.precision=bf16-mixed`` (autocast): the loop multiplies in bf16 and keeps its
    state and gradients in float32; a run trains, validates and tests to real numbers."""
    args = ["trainer.precision=bf16-mixed", "run_name=bf16", "trainer.max_steps=40"]
    train(tmp_path, *args, "logger.mode=disabled")
    metrics = json.loads((tmp_path / "bf16" / "results.json").read_text())["metrics"]
    for split in ("train", "val", "test"):
        assert 0 < metrics[f"{split}/bpc"] < 4.8, (split, metrics[f"{split}/bpc"])
