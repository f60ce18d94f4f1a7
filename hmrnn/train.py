"""Train, validate and test a character language model.

    python -m hmrnn.train experiment=demo [model=lstm] [key=value ...]
    python -m hmrnn.train resume=runs/<run>            # continue a stopped run where it stopped

Each run gets a folder ``<out_dir>/<run_name>`` holding ``config.yaml`` (the resolved
configuration), ``checkpoints/`` (``best.ckpt``, ``last.ckpt``, ``previous.ckpt``; written
atomically, each with a sha256 digest checked on loading), ``csv/metrics.csv``, the W&B files
(``wandb/``, offline by default: ``wandb sync`` uploads them) and, at the end, ``results.json``.
The same command run again continues its run from the folder's checkpoint (a plain restart, a
SLURM requeue); a finished run or one of other settings is refused.

SIGTERM (cluster preemption), Ctrl-C (SIGINT) and SIGUSR1 save ``last.ckpt`` at the next batch end
where a resume is exact and exit with 143 / 130 / 138 (128 + the signal, as a shell reports it)
without testing; in a SLURM job SIGUSR1 also requeues it (``trainer.slurm_requeue``). A second
Ctrl-C stops at once (Lightning's interrupt handling, exit 1; the previous ``last.ckpt`` kept).
``docs/reliability.md`` lists every fault, what the program promises and its test. Under DDP a rank
that fails ends the job: the others fail at their next collective (at once when it crashed,
after ``trainer.ddp_timeout_s`` when it hangs) and rank 0 kills the ranks it launched.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import errno
import io
import json
import math
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from datamodules import build_datamodule
from datamodules.stream import DataError
from hmrnn.compose import compose, config_error, split_arguments
from hmrnn.config import Config, ConfigError, validate
from hmrnn.evaluate import boundary_report, run_split
from hmrnn.io import atomic_write
from hmrnn.lit.base import LitBase
from hmrnn.lit.callbacks import (
    NonFinite,
    NonFiniteError,
    ResumeCheckpoint,
    RNGState,
    SlopeAnnealing,
    Throughput,
)
from hmrnn.lit.checkpoint_io import (
    AtomicCheckpointIO,
    CheckpointError,
    CheckpointWriteError,
    read_checkpoint,
    run_folder_of,
)
from hmrnn.lit.csvlog import ResumableCSVLogger
from hmrnn.lit.handwriting import LitHandwriting
from hmrnn.lit.module import LitCharLM
from hmrnn.visualize import BoundaryFigures

# ------------------------------------------------------------------------------ run folder
RUN_DIR: Path | None = None  # the folder of the run main() started, once known


def resolve_resume(path: str) -> tuple[Path, Path]:
    """(run folder, checkpoint) from ``resume=``: a run folder (its newest readable checkpoint:
    ``last.ckpt``, else ``previous.ckpt``) or a checkpoint file."""
    target = Path(path)
    if target.is_dir():
        return target, newest_readable(target, f"resume={path!r}")
    if target.is_file():
        return run_folder_of(target), target
    raise ConfigError(f"resume={path!r} is neither a run folder nor a checkpoint file")


def newest_readable(run_dir: Path, what: str) -> Path:
    """``last.ckpt`` if it reads and verifies, else ``previous.ckpt`` (with a warning saying
    why); ConfigError when neither is usable."""
    folder = run_dir / "checkpoints"
    problems = []
    for name in ("last.ckpt", "previous.ckpt"):
        ckpt = folder / name
        if not ckpt.is_file():
            continue
        try:
            read_checkpoint(ckpt)
        except CheckpointError as error:
            problems.append(str(error))
            continue
        if problems:  # set the damaged one aside, so that the next save does not keep it
            damaged = folder / "last.ckpt"
            os.replace(damaged, damaged.with_name("last.ckpt.damaged"))
            print(
                f"warning: {problems[0]}; resuming from {ckpt} instead (the damaged file is "
                "kept as last.ckpt.damaged)",
                file=sys.stderr,
            )
        return ckpt
    if problems:
        raise ConfigError(f"{what}: no usable checkpoint: {'; '.join(problems)}")
    raise ConfigError(
        f"{what}: {folder / 'last.ckpt'} does not exist, so there is nothing to resume; start "
        "a new run without resume="
    )


def load_config(argv: list[str]) -> tuple[Config, DictConfig, Path | None]:
    """Compose the configuration; with ``resume=`` start from the run's saved one."""
    _, overrides = split_arguments(argv)
    resume = next((a.split("=", 1)[1] for a in overrides if a.startswith("resume=")), "")
    if not resume:
        config, cfg = compose(argv)
        return config, cfg, None
    run_dir, ckpt = resolve_resume(resume)
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        raise ConfigError(f"resume={resume!r}: {saved} is missing, so the run's settings are lost")
    cfg = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.load(saved))
    OmegaConf.set_struct(cfg, True)
    try:
        saved_config: Config = OmegaConf.to_object(cfg)  # type: ignore[assignment]
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(overrides))
        config = validate(OmegaConf.to_object(cfg))  # type: ignore[arg-type]
    except OmegaConfBaseException as error:
        raise config_error(error, "the command line") from error
    for section in ("model", "data"):  # the checkpoint's network and data position need them
        old, new = (
            dataclasses.asdict(getattr(saved_config, section)),
            dataclasses.asdict(getattr(config, section)),
        )
        for key in old:
            if old[key] != new[key]:
                raise ConfigError(
                    f"{section}.{key}={new[key]!r} differs from the resumed run's "
                    f"{old[key]!r} ({saved}); a resumed run keeps its model and data settings"
                )
    config.resume = str(ckpt)
    config.run_name = run_dir.name
    config.out_dir = str(run_dir.parent)
    return config, cfg, ckpt


def sweep_run_id() -> str:
    """The W&B run id a sweep agent (``wandb agent`` or ``python -m hmrnn.sweep``) assigned to
    this process through ``WANDB_SWEEP_ID`` / ``WANDB_RUN_ID``; empty outside a sweep."""
    if os.environ.get("WANDB_SWEEP_ID"):
        return os.environ.get("WANDB_RUN_ID", "")
    return ""


def default_run_name(config: Config, stamp: str) -> str:
    return f"{config.experiment or 'run'}-{config.model.name}-{stamp}"


def run_folder(config: Config) -> Path:
    """``out_dir/run_name``; an empty run_name becomes ``<experiment>-<model>-<stamp>``, the
    stamp being the sweep's run id, the SLURM job id or the date and time.

    Every DDP rank must agree on it: the name chosen is exported as ``HMRNN_RUN_NAME``, which the
    processes Lightning launches inherit.
    """
    if not config.run_name:
        name = os.environ.get("HMRNN_RUN_NAME")
        if not name:
            job = os.environ.get("SLURM_JOB_ID")
            when = f"slurm{job}" if job else datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
            name = default_run_name(config, sweep_run_id() or when)
        config.run_name = name
    os.environ["HMRNN_RUN_NAME"] = config.run_name
    return Path(config.out_dir) / config.run_name


def continue_same_run(argv: list[str], config: Config, run_dir: Path) -> tuple[Config, Path | None]:
    """The same command started again (a plain restart, a SLURM requeue) continues its run.

    An existing run folder with a checkpoint is resumed when the command's settings equal those
    it saved (as with ``resume=<run folder>``); one with other settings or a finished run
    (``results.json``) is refused, so that nothing is overwritten. A folder without a checkpoint
    (a run killed before its first one) is started again.
    """
    if (run_dir / "results.json").is_file():
        raise ConfigError(
            f"run folder {run_dir} holds a finished run (results.json); choose another run_name "
            "(or out_dir), or remove that folder to run it again"
        )
    saved_yaml = run_dir / "config.yaml"
    checkpoints = [run_dir / "checkpoints" / n for n in ("last.ckpt", "previous.ckpt")]
    if not saved_yaml.is_file() or not any(c.is_file() for c in checkpoints):
        return config, None
    cfg = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.load(saved_yaml))
    saved: Config = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    changed = differences(saved, config)
    if changed:
        key, (there, here) = next(iter(changed.items()))
        raise ConfigError(
            f"run folder {run_dir} holds a run with {key}={there!r}, but this command sets "
            f"{here!r}; continue that run with python -m hmrnn.train resume={run_dir} "
            f"[{key}=...], or choose another run_name"
        )
    print(f"{run_dir} holds this run's checkpoint: continuing it", file=sys.stderr, flush=True)
    config, _, ckpt = load_config([*argv, f"resume={run_dir}"])
    return config, ckpt


def differences(saved: Config, new: Config) -> dict[str, tuple[Any, Any]]:
    """Settings (dotted keys) that differ between a run's saved configuration and a command's,
    leaving out where the run lives and, for a size-matched LSTM, the size it was given."""

    def flat(value: Any, prefix: str = "") -> dict[str, Any]:
        if isinstance(value, dict):
            out: dict[str, Any] = {}
            for key, item in value.items():
                out |= flat(item, f"{prefix}{key}.")
            return out
        return {prefix[:-1]: value}

    ignored = {"resume", "run_name", "out_dir"}
    if saved.model.name == "lstm" and saved.model.match_parameters:
        ignored.add("model.hidden_size")
    a, b = flat(dataclasses.asdict(saved)), flat(dataclasses.asdict(new))
    keys = [k for k in a if k not in ignored and a[k] != b.get(k)]
    return {k: (a[k], b.get(k)) for k in keys}


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
            timeout=10,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def hardware() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


# ---------------------------------------------------------------------------------- build
def strategy_of(t: Any) -> Any:
    """``trainer.strategy``, with DDP's collectives bounded by ``trainer.ddp_timeout_s``."""
    if t.strategy in ("ddp", "ddp_spawn"):
        from lightning.pytorch.strategies import DDPStrategy

        timeout = datetime.timedelta(seconds=t.ddp_timeout_s)
        return DDPStrategy(
            start_method="spawn" if t.strategy == "ddp_spawn" else "popen", timeout=timeout
        )
    return t.strategy


def plugins_of() -> list[Any]:
    """Atomic, digest-checked checkpoint files; under SLURM, no requeue by Lightning (its
    SIGUSR1 handler saves at any batch; ours saves where a resume is exact, then requeues)."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    plugins: list[Any] = [AtomicCheckpointIO()]
    if SLURMEnvironment.detect():
        plugins.append(SLURMEnvironment(auto_requeue=False))
    return plugins


def build_trainer(config: Config, run_dir: Path) -> tuple[L.Trainer, dict[str, Any]]:
    t = config.trainer
    os.environ.setdefault("WANDB_SILENT", "true")
    loggers: list[Any] = [ResumableCSVLogger(save_dir=str(run_dir), name="csv", version="")]
    if config.logger.mode != "disabled":
        loggers.append(
            WandbLogger(
                save_dir=str(run_dir),
                project=config.logger.project,
                entity=config.logger.entity or None,
                name=config.run_name,
                # in a sweep the agent's run id, so the run is the one the sweep proposed
                id=sweep_run_id() or config.run_name.replace("/", "-")[-64:],
                tags=list(config.logger.tags) or None,
                mode=config.logger.mode,
                resume="allow",
            )
        )
    handwriting = lit_class(config) is LitHandwriting
    checkpoint = ModelCheckpoint(  # the best model, for testing; resuming uses last.ckpt
        dirpath=str(run_dir / "checkpoints"),
        filename="best",
        monitor="val/ll" if handwriting else "val/bpc",
        mode="max" if handwriting else "min",
        save_top_k=1,
        save_last=False,
        enable_version_counter=False,
    )
    throughput = Throughput()
    resume = ResumeCheckpoint(
        run_dir / "checkpoints" / "last.ckpt", t.checkpoint_every_n_steps, t.min_free_mb
    )
    callbacks: list[L.Callback] = [
        checkpoint,
        resume,
        RNGState(),
        NonFinite(
            t.nonfinite,
            f"{run_dir / 'checkpoints' / 'last.ckpt'} holds the last good state "
            f"(python -m hmrnn.train resume={run_dir}). ",
        ),
        throughput,
        LearningRateMonitor("step"),
    ]
    if config.model.cell == "hmlstm":
        callbacks.append(SlopeAnnealing(config.slope))
        if config.logger.mode != "disabled":  # the boundary figure of each validation, to W&B
            callbacks.append(BoundaryFigures())
    if t.enable_progress_bar:
        callbacks.append(TQDMProgressBar(refresh_rate=10))
    trainer = L.Trainer(
        max_epochs=t.max_epochs,
        max_steps=t.max_steps,
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=strategy_of(t),
        precision=t.precision,
        val_check_interval=t.val_check_interval,
        limit_val_batches=t.limit_val_batches,
        log_every_n_steps=t.log_every_n_steps,
        gradient_clip_val=config.optim.grad_clip or None,
        deterministic=t.deterministic,
        enable_progress_bar=t.enable_progress_bar,
        use_distributed_sampler=False,  # contiguous per-rank shards keep the carried state valid
        num_sanity_val_steps=0,
        default_root_dir=str(run_dir),
        plugins=plugins_of(),
        logger=loggers,
        callbacks=callbacks,
    )
    return trainer, {"checkpoint": checkpoint, "throughput": throughput, "resume": resume}


# ------------------------------------------------------------------------------------ run
def lit_class(config: Config) -> type[LitCharLM] | type[LitHandwriting]:
    """The LightningModule of a data set: handwriting for IAM-OnDB, the character LM else."""
    return LitHandwriting if config.data.name == "iam_ondb" else LitCharLM


def build_module(config: Config, dm: Any) -> LitBase:
    """The LightningModule of a run, its network sized and wired for the data set ``dm``."""
    if lit_class(config) is LitHandwriting:
        mean, std = [float(v) for v in dm.mean], [float(v) for v in dm.std]
        return LitHandwriting(dataclasses.asdict(config), mean, std)
    delimiters = dm.delimiter_ids()
    m = config.model
    if m.name == "fixed_boundary" and m.fixed_source == "delimiter" and not delimiters:
        raise ConfigError(
            f"model.fixed_source=delimiter: data={config.data.name} has no word delimiter; "
            "use model.fixed_source=periodic"
        )
    vocab = list(dm.vocab.symbols)
    truth = {kind: [list(before), list(at)] for kind, (before, at) in dm.truth_rules().items()}
    return LitCharLM(dataclasses.asdict(config), len(vocab), vocab, delimiters, truth)


def preflight(config: Config, dm: Any) -> None:
    """Checks of the data against the batching, before any work: ConfigError naming the keys."""
    d, t = config.data, config.trainer
    if hasattr(dm, "tokens"):  # a character stream: B rows of T-step segments per split
        for split, name in (("train", "train"), ("valid", "validation"), ("test", "test")):
            rows = d.batch_size if split == "train" or not d.eval_batch_size else d.eval_batch_size
            if len(dm.tokens[split]) // rows < 2:
                raise ConfigError(
                    f"the {name} split holds {len(dm.tokens[split]):,} symbols, too few for "
                    f"{rows} rows of at least 2 symbols; lower data.batch_size"
                    + (" (or data.eval_batch_size)" if split != "train" else "")
                )
        batches = math.ceil((len(dm.tokens["train"]) // d.batch_size - 1) / d.bptt)
    else:
        batches = len(dm.batch_sampler("train"))
    interval = t.val_check_interval
    if isinstance(interval, int) and not isinstance(interval, bool) and interval > batches:
        raise ConfigError(
            f"trainer.val_check_interval={interval} exceeds the {batches:,} training batches of "
            f"an epoch (data.batch_size={d.batch_size}, data.bptt={d.bptt}); use at most "
            f"{batches:,}, or a fraction of an epoch such as 1.0"
        )


def check_checkpoint(ckpt: Path, config: Config, dm: Any) -> dict[str, Any]:
    """The checkpoint ``ckpt``; ConfigError unless it can be read and holds this run's model
    and vocabulary."""
    try:
        saved = read_checkpoint(ckpt)
    except CheckpointError as error:
        raise ConfigError(
            f"resume: {error}: resume from another checkpoint of the run (resume=<run folder> "
            "takes the newest readable one)"
        ) from error
    hparams = saved.get("hyper_parameters", {}) if isinstance(saved, dict) else {}
    model = hparams.get("config", {}).get("model", {})
    for key, value in dataclasses.asdict(config.model).items():
        if key in model and model[key] != value:
            raise ConfigError(
                f"resume: {ckpt} holds a model with model.{key}={model[key]!r}, but the run's "
                f"config.yaml says {value!r}: the checkpoint comes from another run"
            )
    vocab, current = hparams.get("vocab"), getattr(dm, "vocab", None)
    if vocab is not None and current is not None and list(vocab) != list(current.symbols):
        raise ConfigError(
            f"resume: the vocabulary of {ckpt} ({len(vocab)} symbols) differs from "
            f"data={config.data.name}'s ({len(current)}): the data files changed since the "
            "run started; restore them or start a new run"
        )
    return saved


def logged_through(checkpoint: dict[str, Any]) -> int | None:
    """The ``step`` of the checkpoint's own batch in the logs: Lightning logs a batch's row under
    the count of batches before it, which the checkpoint holds (``_batches_that_stepped``)."""
    loop = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_loop.state_dict", {})
    return loop.get("_batches_that_stepped")


def trim_log(csv_path: Path, last: int | None) -> None:
    """Drop the CSV log's rows of steps after ``last``: the resumed run logs them again."""
    if last is None or not csv_path.is_file():
        return
    with csv_path.open(newline="") as f:
        reader = csv.DictReader(f)
        header, rows = reader.fieldnames or [], list(reader)
    kept = [row for row in rows if not row.get("step") or float(row["step"]) <= last]
    if len(kept) < len(rows):
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=header, lineterminator="\n")
        writer.writeheader()
        writer.writerows(kept)
        atomic_write(csv_path, out.getvalue())


def match_lstm_size(config: Config, dm: Any) -> int:
    """The largest LSTM hidden size whose module has no more parameters than the HM-LSTM of
    ``config.model.hidden_size`` (``model.match_parameters``); built on the meta device."""

    def count(name: str, hidden: int) -> int:
        model = dataclasses.replace(config.model, name=name, hidden_size=hidden)
        with torch.device("meta"):
            return build_module(dataclasses.replace(config, model=model), dm).num_parameters()

    target = count("hmlstm", config.model.hidden_size)
    low, high = 1, 4 * config.model.hidden_size  # count("lstm", low) <= target < count(high)
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if count("lstm", mid) <= target else (low, mid)
    return low


def scalar_metrics(trainer: L.Trainer) -> dict[str, float]:
    return {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}


def summarise(
    config: Config,
    module: LitCharLM,
    dm: Any,
    trainer: L.Trainer,
    parts: dict[str, Any],
    metrics: dict[str, float],
    started: float,
) -> dict[str, Any]:
    """results.json's content: metrics, reference rates, boundaries, config, provenance."""
    best = parts["checkpoint"].best_model_score
    monitor = parts["checkpoint"].monitor  # val/bpc, or val/ll for handwriting
    results: dict[str, Any] = {
        "run_name": config.run_name,
        "metrics": metrics,
        "monitor": monitor,
        "best_" + monitor.replace("/", "_"): None if best is None else float(best),
        "best_checkpoint": parts["checkpoint"].best_model_path,
        "parameters": module.num_parameters(),
        "train_chars_per_sec": parts["throughput"].mean_chars_per_sec,
        "global_step": trainer.global_step,
        "world_size": trainer.world_size,
        "epochs": trainer.current_epoch,
        "wall_seconds": time.time() - started,
        "git_commit": git_commit(),
        "hardware": hardware(),
        "config": dataclasses.asdict(config),
    }
    if hasattr(dm, "reference_rates"):
        results["reference_rates"] = dm.reference_rates()
    counts = update_counts(metrics, config.model.num_layers)
    if counts is not None:
        results["update_counts"] = counts
    truth = dm.boundaries("test") if hasattr(dm, "boundaries") else {}
    if truth and config.test and config.model.cell == "hmlstm":
        bpc, bounds, seen = run_split(module.model, dm, "test")
        results["test_bpc_one_process"] = bpc
        results["boundaries"] = boundary_report(bounds, seen, truth)
        results["boundary_rates"] = bounds[seen].mean(0).tolist()
    return results


def update_counts(metrics: dict[str, float], K: int, steps: int = 270) -> dict[str, Any] | None:
    """The paper's count (SPEC section 7): layer updates (UPDATE or FLUSH: the layer computes)
    per ``steps`` steps of test text, against a plain stacked RNN's ``K * steps``; from the test
    split's operation fractions. None without them (the LSTM, or no test)."""
    if f"test/update_l{K}" not in metrics:
        return None
    per_layer = [
        steps * (metrics[f"test/update_l{l}"] + metrics[f"test/flush_l{l}"])
        for l in range(1, K + 1)
    ]
    return {
        "steps": steps,
        "per_layer": per_layer,
        "total": sum(per_layer),
        "stacked_rnn": K * steps,
    }


def print_summary(results: dict[str, Any]) -> None:
    m = results["metrics"]
    lines = [
        "",
        f"run {results['run_name']}: {results['parameters']:,} parameters, "
        f"{results['train_chars_per_sec']:,.0f} chars/s, {results['wall_seconds']:.0f} s",
    ]
    for key in ("test/bpc", "val/bpc", "test/ll", "val/ll"):
        if key in m:
            lines.append(f"  {key:<28} {m[key]:.4f}")
    for name, value in results.get("reference_rates", {}).items():
        lines.append(f"  {name:<28} {value:.4f}")
    if "update_counts" in results:
        c = results["update_counts"]
        layers = " / ".join(f"{n:.0f}" for n in c["per_layer"])
        lines.append(
            f"  updates per {c['steps']} steps      {layers} (total {c['total']:.0f}; "
            f"a stacked RNN {c['stacked_rnn']})"
        )
    if "boundary_rates" in results:
        rates = ", ".join(f"l{i + 1} {r:.3f}" for i, r in enumerate(results["boundary_rates"]))
        lines.append(f"  boundary rates               {rates}")
        lines.append("  boundaries vs truth          precision  recall     F1")
        for key, s in results["boundaries"].items():
            lines.append(f"    {key:<26} {s['precision']:9.3f} {s['recall']:7.3f} {s['f1']:6.3f}")
    print("\n".join(lines), flush=True)


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    argv = sys.argv[1:] if argv is None else argv
    started = time.time()
    config, _, ckpt = load_config(argv)
    run_dir = run_folder(config)
    global RUN_DIR
    RUN_DIR = run_dir  # for the error messages of cli()
    if ckpt is None and run_dir.is_dir():
        config, ckpt = continue_same_run(argv, config, run_dir)
    L.seed_everything(config.seed, workers=True, verbose=False)
    dm = build_datamodule(config.data)
    try:
        dm.setup()
    except DataError as error:
        raise ConfigError(str(error)) from error
    preflight(config, dm)
    # the CSV rows the run will log again: after its checkpoint, or all when it starts over
    logged = logged_through(check_checkpoint(ckpt, config, dm)) if ckpt is not None else -1
    # on resume, fit(ckpt_path=...) restores weights, optimiser, loops, loader position, RNG
    lit = lit_class(config)
    if config.model.name == "lstm" and config.model.match_parameters and ckpt is None:
        # a resumed run keeps the size saved in its config
        matched = match_lstm_size(config, dm)
        print(
            f"model.match_parameters: hidden_size {config.model.hidden_size} -> {matched} "
            "(the LSTM with at most the HM-LSTM's parameters)",
            flush=True,
        )
        config.model.hidden_size = matched
    module = build_module(config, dm)
    trainer, parts = build_trainer(config, run_dir)
    for logger in trainer.loggers:  # so that ablations compare at equal size (W&B config, CSV)
        logger.log_hyperparams({"parameters": module.num_parameters()})
    if trainer.is_global_zero:
        resolved = OmegaConf.to_yaml(OmegaConf.structured(config))
        print(f"run folder: {run_dir}\n{resolved}", flush=True)
        atomic_write(run_dir / "config.yaml", resolved)
        if getattr(dm, "vocab", None) is not None:
            atomic_write(run_dir / "vocab.json", dm.vocab.to_json())
        trim_log(run_dir / "csv" / "metrics.csv", logged)
    try:
        trainer.fit(module, datamodule=dm, ckpt_path=str(ckpt) if ckpt else None, weights_only=True)
    except SIGTERMException:
        stopped_by = parts["resume"].stop_signal or signal.SIGTERM
        if trainer.is_global_zero:
            print(after_stop(stopped_by, run_dir, config), file=sys.stderr, flush=True)
        sys.exit(128 + int(stopped_by))
    except BaseException:
        end_other_ranks(trainer)  # a failed rank ends the whole job, none is left waiting
        raise
    metrics = scalar_metrics(trainer)  # the last logged values of training and validation
    if config.test:
        best = parts["checkpoint"].best_model_path
        trainer.test(
            module, datamodule=dm, ckpt_path=best or None, verbose=False, weights_only=True
        )
        metrics |= scalar_metrics(trainer)
        if best:  # the returned summary evaluates the model that was tested
            module = lit.load_from_checkpoint(best, map_location="cpu")
    if not trainer.is_global_zero:
        return None
    results = summarise(config, module, dm, trainer, parts, metrics, started)
    atomic_write(run_dir / "results.json", json.dumps(results, indent=2, default=str))
    print_summary(results)
    return results


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


def cli() -> None:
    try:
        main()
    except ConfigError as error:
        fail(str(error), 2)
    except (NonFiniteError, CheckpointWriteError) as error:
        fail(str(error), 1)
    except OSError as error:
        if error.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        target = error.filename2 or error.filename  # a copy names its source, then its target
        where = f" while writing {target}" if target else ""
        fail(
            f"no space left on the device{where}; the run stopped and its last complete "
            f"checkpoint is intact: free space, then continue with "
            f"python -m hmrnn.train resume={RUN_DIR or '<run folder>'}",
            1,
        )


def fail(message: str, code: int) -> NoReturn:
    """Exit with ``error: <message>`` as the last thing on stderr.

    W&B's teardown at exit reports its own failures (on a full disk, pages of them, which would
    bury the one sentence that matters): logging is turned off first.
    """
    import logging

    logging.disable(logging.CRITICAL)
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


if __name__ == "__main__":
    cli()
