"""One training run from its command line: compose or resume the configuration, build, fit, test,
summarise (``python -m hmrnn.train`` calls :func:`main`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import OmegaConf

from datamodules import build_datamodule
from datamodules.base import DataSetModule
from datamodules.stream import DataError
from hmrnn.config import Config, ConfigError
from hmrnn.io import atomic_write
from hmrnn.lit.callbacks import ResumeCheckpoint
from hmrnn.run.build import (
    build_module,
    build_trainer,
    check_checkpoint,
    lit_class,
    match_lstm_size,
    preflight,
)
from hmrnn.run.folder import continue_same_run, load_config, logged_through, run_folder, trim_log
from hmrnn.run.summary import print_summary, scalar_metrics, summarise

RUN_DIR: Path | None = None  # the folder of the run main() started, once known (for errors)


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    """Run ``argv``: results.json's content on rank 0 (None on the others).

    The run's name is exported to the DDP ranks it launches (``HMRNN_RUN_NAME``) only while it
    runs: a later run in the same process (a test, a notebook) chooses its own.
    """
    previous = os.environ.get("HMRNN_RUN_NAME")
    try:
        return run(argv)
    finally:
        if previous is None:
            os.environ.pop("HMRNN_RUN_NAME", None)
        else:
            os.environ["HMRNN_RUN_NAME"] = previous


def run(argv: list[str] | None) -> dict[str, Any] | None:
    """:func:`main` without restoring the environment."""
    started = time.time()
    config, run_dir, ckpt = resolve(sys.argv[1:] if argv is None else argv)
    L.seed_everything(config.seed, workers=True, verbose=False)
    dm = build_datamodule(config.data)
    try:
        dm.setup()
    except DataError as error:
        raise ConfigError(str(error)) from error
    preflight(config, dm)
    # the CSV rows the run will log again: after its checkpoint, or all when it starts over
    logged = logged_through(check_checkpoint(ckpt, config, dm)) if ckpt is not None else -1
    if config.model.cell == "lstm" and config.model.match_parameters and ckpt is None:
        match_size(config, dm)  # a resumed run keeps the size saved in its config
    module = build_module(config, dm)
    trainer, parts = build_trainer(config, run_dir)
    for logger in trainer.loggers:  # so that ablations compare at equal size (W&B config, CSV)
        logger.log_hyperparams({"parameters": module.num_parameters()})
    if trainer.is_global_zero:
        record(config, run_dir, dm, logged)
    # on resume, fit(ckpt_path=...) restores weights, optimiser, loops, loader position, RNG
    fit(trainer, module, dm, ckpt, parts["resume"], run_dir, config)
    metrics = scalar_metrics(trainer)  # the last logged values of training and validation
    if config.test:
        best = parts["checkpoint"].best_model_path
        trainer.test(
            module, datamodule=dm, ckpt_path=best or None, verbose=False, weights_only=True
        )
        metrics |= scalar_metrics(trainer)
        if best:  # the returned summary evaluates the model that was tested
            module = lit_class(config).load_from_checkpoint(best, map_location="cpu")
    if not trainer.is_global_zero:
        return None
    results = summarise(config, module, dm, trainer, parts, metrics, started, run_dir)
    atomic_write(run_dir / "results.json", json.dumps(results, indent=2, default=str))
    print_summary(results, run_dir)
    return results


def resolve(argv: list[str]) -> tuple[Config, Path, Path | None]:
    """The run's configuration, folder and the checkpoint it continues from (None: a new run):
    ``resume=``, or the same command started again in its run folder."""
    global RUN_DIR
    config, _, ckpt = load_config(argv)
    run_dir = run_folder(config)
    RUN_DIR = run_dir
    if ckpt is None and run_dir.is_dir():
        config, ckpt = continue_same_run(argv, config, run_dir)
    return config, run_dir, ckpt


def match_size(config: Config, dm: DataSetModule) -> None:
    """``model.match_parameters``: give the LSTM the HM-LSTM's parameter budget."""
    matched = match_lstm_size(config, dm)
    print(
        f"model.match_parameters: hidden_size {config.model.hidden_size} -> {matched} "
        "(the LSTM with at most the HM-LSTM's parameters)",
        flush=True,
    )
    config.model.hidden_size = matched


def record(config: Config, run_dir: Path, dm: DataSetModule, logged: int | None) -> None:
    """Rank 0, before training: print and save the resolved configuration (and vocabulary), and
    drop the CSV log's rows after ``logged`` (the resumed run logs them again)."""
    resolved = OmegaConf.to_yaml(OmegaConf.structured(config))
    print(f"run folder: {run_dir}\n{resolved}", flush=True)
    atomic_write(run_dir / "config.yaml", resolved)
    vocab = dm.vocabulary()
    if vocab is not None:
        atomic_write(run_dir / "vocab.json", json.dumps(vocab))
    trim_log(run_dir / "csv" / "metrics.csv", logged)


def fit(
    trainer: L.Trainer,
    module: Any,
    dm: DataSetModule,
    ckpt: Path | None,
    resume: ResumeCheckpoint,
    run_dir: Path,
    config: Config,
) -> None:
    """``trainer.fit``; a signal that stopped it exits with 128 + the signal after saying what
    comes next, and any failure kills the DDP ranks this process launched."""
    try:
        trainer.fit(module, datamodule=dm, ckpt_path=str(ckpt) if ckpt else None, weights_only=True)
    except SIGTERMException:
        stopped_by = resume.stop_signal or signal.SIGTERM  # the signal its handler saw
        if trainer.is_global_zero:
            print(after_stop(stopped_by, run_dir, config), file=sys.stderr, flush=True)
        sys.exit(128 + int(stopped_by))
    except BaseException:
        end_other_ranks(trainer)  # a failed rank ends the whole job, none is left waiting
        raise


def after_stop(signum: int, run_dir: Path, config: Config) -> str:
    """What happens next, after a signal stopped the run; SIGUSR1 in a SLURM job (sent before
    its time limit) requeues the job, whose restart continues the run."""
    again = f"continue with: python -m hmrnn.train resume={run_dir}"
    job = slurm_job_id()
    if signum == signal.SIGUSR1 and job and config.trainer.slurm_requeue:
        try:
            subprocess.run(
                ["scontrol", "requeue", job], check=True, capture_output=True, text=True, timeout=60
            )
            again = f"requeued SLURM job {job}; its restart continues the run"
        except (OSError, subprocess.SubprocessError) as error:
            detail = str(getattr(error, "stderr", "") or error).strip()
            again = f"scontrol requeue {job} failed ({detail}); resubmit the job, or {again}"
    return f"stopped by {signal.Signals(signum).name}; {again}"


def slurm_job_id() -> str:
    """The id ``scontrol requeue`` takes: ``<array job>_<task>`` in a job array."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID", "")


def end_other_ranks(trainer: L.Trainer) -> None:
    """Kill the DDP ranks this process launched (Lightning kills them only on Ctrl-C)."""
    for proc in getattr(trainer.strategy.launcher, "procs", None) or []:
        if proc.poll() is None:
            proc.kill()
