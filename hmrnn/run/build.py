"""Build a run's pieces from its configuration: the LightningModule, the Trainer with its loggers,
callbacks and plugins, and the checks of data and checkpoint made before any work."""

from __future__ import annotations

import dataclasses
import datetime
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import WandbLogger

from datamodules.base import DataError, DataSetModule
from hmrnn.config import Config, ConfigError
from hmrnn.lit.base import LitBase
from hmrnn.lit.callbacks import (
    NonFinite,
    ResumeCheckpoint,
    RNGState,
    SlopeAnnealing,
    Throughput,
)
from hmrnn.lit.checkpoint_io import (
    AtomicCheckpointIO,
    CheckpointError,
    read_checkpoint,
)
from hmrnn.lit.csvlog import ResumableCSVLogger
from hmrnn.lit.handwriting import LitHandwriting
from hmrnn.lit.module import LitCharLM
from hmrnn.lit.noise import quiet
from hmrnn.registry import DATASETS
from hmrnn.run.figures import BoundaryFigures
from hmrnn.run.folder import sweep_run_id


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


def wandb_logger(**kwargs: Any) -> WandbLogger:
    """Lightning's WandbLogger without its ``anonymous=None`` argument, which wandb answers
    with a deprecation warning on every run (the setting has no effect in wandb >= 0.19)."""
    logger = WandbLogger(**kwargs)
    init = getattr(logger, "_wandb_init", None)  # a private dict: guarded
    if isinstance(init, dict) and init.get("anonymous") is None:
        init.pop("anonymous", None)
    return logger


def build_trainer(config: Config, run_dir: Path) -> tuple[L.Trainer, dict[str, Any]]:
    """The run's Trainer, and its parts the run reads later: ``checkpoint`` (the best model),
    ``throughput`` and ``resume`` (last.ckpt, the signal that stopped the run)."""
    t = config.trainer
    quiet()
    callbacks, parts = callbacks_of(config, run_dir)
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
        limit_test_batches=t.limit_test_batches,
        log_every_n_steps=t.log_every_n_steps,
        gradient_clip_val=config.optim.grad_clip or None,
        deterministic=t.deterministic,
        enable_progress_bar=t.enable_progress_bar,
        use_distributed_sampler=False,  # contiguous per-rank shards keep the carried state valid
        num_sanity_val_steps=0,
        default_root_dir=str(run_dir),
        plugins=plugins_of(),
        logger=loggers_of(config, run_dir),
        callbacks=callbacks,
    )
    return trainer, parts


def loggers_of(config: Config, run_dir: Path) -> list[Any]:
    """The CSV log, always, and W&B unless ``logger.mode=disabled``."""
    os.environ.setdefault("WANDB_SILENT", "true")
    loggers: list[Any] = [ResumableCSVLogger(save_dir=str(run_dir), name="csv", version="")]
    if config.logger.mode != "disabled":
        loggers.append(
            wandb_logger(
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
    return loggers


def callbacks_of(config: Config, run_dir: Path) -> tuple[list[L.Callback], dict[str, Any]]:
    """The run's callbacks, and those of them the run reads later (see :func:`build_trainer`)."""
    t = config.trainer
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
    last = run_dir / "checkpoints" / "last.ckpt"
    parts = {
        "checkpoint": checkpoint,
        "throughput": Throughput(),
        "resume": ResumeCheckpoint(last, t.checkpoint_every_n_steps, t.min_free_mb),
    }
    again = f"{last} holds the last good state (python -m hmrnn.train resume={run_dir}). "
    callbacks: list[L.Callback] = [
        checkpoint,
        parts["resume"],
        RNGState(),
        NonFinite(t.nonfinite, again),
        parts["throughput"],
        LearningRateMonitor("step"),
    ]
    if config.model.spec.hierarchical:
        callbacks.append(SlopeAnnealing(config.slope))
        if config.logger.mode != "disabled":  # the boundary figure of each validation, to W&B
            callbacks.append(BoundaryFigures())
    if t.enable_progress_bar:
        callbacks.append(TQDMProgressBar(refresh_rate=10))
    return callbacks, parts


# the LightningModule of each kind of data set (``DataSet.kind``)
LIT_CLASSES: dict[str, type[LitCharLM] | type[LitHandwriting]] = {
    "text": LitCharLM,
    "handwriting": LitHandwriting,
}


def lit_class(config: Config) -> type[LitCharLM] | type[LitHandwriting]:
    """The LightningModule of the run's data set, by its kind (text or handwriting)."""
    return LIT_CLASSES[DATASETS.get(config.data.name).kind]


def build_module(config: Config, dm: DataSetModule) -> LitBase:
    """The LightningModule of a run, its network sized and wired for the data set ``dm``."""
    module = _build_module(config, dm)
    for part in module.modules():  # the recurrent cores that can run as CUDA graphs
        if hasattr(part, "cuda_graphs"):
            part.cuda_graphs = config.trainer.cuda_graphs
    return module


def _build_module(config: Config, dm: DataSetModule) -> LitBase:
    if lit_class(config) is LitHandwriting:
        mean, std = [float(v) for v in dm.mean], [float(v) for v in dm.std]
        return LitHandwriting(dataclasses.asdict(config), mean, std)
    delimiters = dm.delimiter_ids()
    m = config.model
    if m.spec.imposed and m.fixed_source == "delimiter" and not delimiters:
        raise ConfigError(
            f"model.fixed_source=delimiter: data={config.data.name} has no word delimiter; "
            "use model.fixed_source=periodic"
        )
    vocab = dm.vocabulary()
    truth = {kind: [list(before), list(at)] for kind, (before, at) in dm.truth_rules().items()}
    return LitCharLM(dataclasses.asdict(config), len(vocab), vocab, delimiters, truth)


def preflight(config: Config, dm: DataSetModule) -> None:
    """Checks of the data against the batching, before any work: ConfigError naming the keys."""
    d, t = config.data, config.trainer
    try:
        dm.check_batching()
    except DataError as error:
        raise ConfigError(str(error)) from error
    batches = dm.train_batches()
    interval = t.val_check_interval
    if isinstance(interval, int) and not isinstance(interval, bool) and interval > batches:
        raise ConfigError(
            f"trainer.val_check_interval={interval} exceeds the {batches:,} training batches of "
            f"an epoch (data.batch_size={d.batch_size}, data.bptt={d.bptt}); use at most "
            f"{batches:,}, or a fraction of an epoch such as 1.0"
        )


def check_checkpoint(ckpt: Path, config: Config, dm: DataSetModule) -> dict[str, Any]:
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
    vocab, current = hparams.get("vocab"), dm.vocabulary()
    if vocab is not None and current is not None and list(vocab) != current:
        raise ConfigError(
            f"resume: the vocabulary of {ckpt} ({len(vocab)} symbols) differs from "
            f"data={config.data.name}'s ({len(current)}): the data files changed since the "
            "run started; restore them or start a new run"
        )
    return saved


def match_lstm_size(config: Config, dm: DataSetModule) -> int:
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
