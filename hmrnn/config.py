"""The one schema of every setting: typed dataclasses with defaults in code (stdlib only).

Field names equal the constructor arguments they feed. ``hmrnn.compose`` layers
``conf/data/<name>.yaml``, ``conf/model/<name>.yaml``, ``conf/experiment/<name>.yaml`` and the
command line's ``key=value`` pairs over these defaults, then :func:`validate` checks the choices.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

from hmrnn.registry import DATASETS, ESTIMATORS, MODELS, Registry, unknown_choice

FIXED_SOURCES = ("periodic", "delimiter")
LOGGER_MODES = ("online", "offline", "disabled")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")
PRECISIONS = ("32-true", "32", "bf16-mixed", "16-mixed", "64-true", "64", "bf16-true")


@dataclass
class ModelConfig:
    """The network: ``name`` picks the recurrent core, the rest are its constructor arguments."""

    name: str = "hmlstm"
    """``hmlstm`` (the paper's model), ``soft_gated`` (the HM-LSTM with boundaries never
    discretised, the paper's "soft" row; ``boundary`` must be ``soft``), ``fixed_boundary`` (the
    HM-LSTM with boundaries imposed by ``fixed_source`` / ``fixed_periods``, not learned) or
    ``lstm`` (stacked torch.nn.LSTM, same output module)."""
    hidden_size: int = 512
    """H, the size of every layer."""
    num_layers: int = 3
    """K, the number of layers."""
    embedding_dim: int = 128
    """Size of the input character embedding (no non-linearity)."""
    output_size: int = 512
    """E, the size of the output embedding h^e."""
    layer_norm: bool = False
    """Layer normalisation of each projection and of c_t (model.md §4)."""
    boundary: str = "step"
    """Boundary estimator: ``step``, ``bernoulli`` or ``soft`` (HM-LSTM only; the paper's), or
    ``step_leaky`` (straight-through with a gradient outside the hard sigmoid's window too: not
    in the paper, docs/hierarchy.md)."""
    top_layer_boundary: bool = False
    """Give the top layer a boundary detector (not in the paper; HM-LSTM only)."""
    grad_through_ops: bool = True
    """Straight-through gradient also through the COPY/UPDATE/FLUSH masks (HM-LSTM only)."""
    detector_input_grad: bool = True
    """The boundary detectors' pre-activations pass their gradient to their inputs (the h's and
    the input), as in the paper; false: only to the z rows' own weights, bias and layer-norm
    gains (HM-LSTM only; not in the paper: docs/hierarchy.md)."""
    z_bias_init: list[float] = field(default_factory=list)
    """Initial bias of the boundary detectors' z rows, one per detector layer (bottom first);
    empty: 0 for all (model.md §5). Positive starts a detector firing on most steps (HM-LSTM
    only; not in the paper: docs/hierarchy.md)."""
    fixed_source: str = "delimiter"
    """``fixed_boundary`` only: what layer 1 counts, ``periodic`` (every step, clockwork-like)
    or ``delimiter`` (the data's word separators: space, ``_`` or end of line for text, pen-up
    for handwriting)."""
    fixed_periods: list[int] = field(default_factory=lambda: [1, 4])
    """``fixed_boundary`` only: one period per detector layer; layer l fires on every
    ``fixed_periods[l]``-th event of its base (layer 1: ``fixed_source``; layer l > 1: layer
    l-1's firings). ``[1, 4]`` by delimiter: every word end, every fourth word end."""
    match_parameters: bool = False
    """For ``lstm``: use the largest hidden size whose model has no more parameters than the
    HM-LSTM of ``hidden_size`` (comparisons at equal size; the size used is saved in the run's
    config). The HM-LSTM variants are the reference and ignore it, so one sweep can set it."""

    @property
    def spec(self) -> Any:
        """The registered :class:`hmrnn.models.ModelSpec` of ``name``."""
        return MODELS.get(self.name)

    @property
    def cell(self) -> str:
        """The recurrent core ``name`` builds: ``hmlstm`` (every HM-LSTM variant) or ``lstm``."""
        return self.spec.cell


@dataclass
class DataConfig:
    """The data set and its batching: a contiguous stream cut into B rows, BPTT steps a batch."""

    name: str = "synthetic"
    """Data set: ``synthetic`` (embedded), ``ptb``, ``text8``, ``enwik8`` or ``iam_ondb``."""
    root: str = "data"
    """Folder for downloads and caches (relative to the working directory)."""
    local_dir: str = ""
    """Take the data set's files from this folder or file instead of downloading them."""
    batch_size: int = 64
    """Global batch size B (split evenly over the DDP ranks)."""
    bptt: int = 100
    """Truncated-BPTT length T: steps per batch, the state carried across batches."""
    eval_batch_size: int = 0
    """Batch size of validation and test streams; 0 means ``batch_size``."""
    train_chars: int = 2_000_000
    """Synthetic data: characters in the training split."""
    valid_chars: int = 100_000
    """Synthetic data: characters in the validation split."""
    test_chars: int = 100_000
    """Synthetic data: characters in the test split."""
    source_seed: int = 0
    """Synthetic data: seed of the source's lexicon (words, markers)."""
    iam_split: str = "random"
    """IAM-OnDB: ``random`` (the paper's 90/5/5 of all lines with enough points) or ``official``
    (IAM-OnDB-t1 forms: train = trainset + testset_t + testset_f, valid = test = testset_v)."""
    iam_seed: int = 2017
    """IAM-OnDB: seed of the random split."""
    iam_min_points: int = 300
    """IAM-OnDB: lines with fewer points are dropped (model.md §6)."""
    iam_splits_dir: str = ""
    """IAM-OnDB: folder of the official form lists; empty: look beside the data."""


@dataclass
class OptimConfig:
    """Adam, gradient clipping and the plateau schedule (model.md §6)."""

    lr: float = 2e-3
    """Adam learning rate."""
    warmup_steps: int = 0
    """Raise the learning rate linearly from lr / warmup_steps to lr over the first this many
    optimiser steps (0: none; not in the paper)."""
    z_lr_scale: float = 1.0
    """HM-LSTM: the boundary detectors' z rows (their weights, bias and layer-norm gains) take
    Adam steps this many times the others' (1: as the paper; not in the paper otherwise:
    docs/hierarchy.md)."""
    weight_decay: float = 0.0
    """Adam weight decay."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0 disables)."""
    plateau_factor: float = 0.02
    """Multiply the learning rate by this when the validation loss stops improving (1/50)."""
    plateau_patience: int = 0
    """Validations without improvement before the learning rate drops."""
    min_lr: float = 0.0
    """Lower bound of the learning rate."""


@dataclass
class SlopeConfig:
    """Slope annealing of the hard sigmoid: a = min(max_slope, 1 + rate * epoch) (model.md §2)."""

    rate: float = 0.0
    """k, the slope's growth per (fractional) epoch; 0 keeps a = 1."""
    max_slope: float = 1.0
    """a_max, the largest slope."""


@dataclass
class RegularizerConfig:
    """Boundary-rate regulariser (not in the paper; off by default)."""

    weight: float = 0.0
    """Weight of the penalty ``sum_l (mean z^l - target_l)^2``; 0 disables it."""
    target_rates: list[float] = field(default_factory=list)
    """Target firing rate of each detector layer (bottom first)."""


@dataclass
class TrainerConfig:
    """Arguments of ``lightning.Trainer`` (the ones a run needs)."""

    max_epochs: int = 10
    """Training epochs."""
    max_steps: int = -1
    """Stop after this many optimiser steps (-1: no limit)."""
    accelerator: str = "auto"
    """``auto``, ``cpu``, ``gpu``, ``cuda`` or ``mps``."""
    devices: Any = 1
    """Number of devices (or a list of ids, or ``auto``)."""
    num_nodes: int = 1
    """Number of nodes (SLURM or torchrun)."""
    strategy: str = "auto"
    """``auto``, ``ddp``, ``ddp_spawn``, ..."""
    ddp_timeout_s: int = 600
    """DDP: seconds a rank waits for the others at a collective before the job fails (a rank
    that hangs ends the job in bounded time; one that crashes ends it at once)."""
    precision: str = "32-true"
    """Lightning precision, e.g. ``32-true`` or ``bf16-mixed`` (the loop then multiplies in
    bf16 and keeps its state and gradients in float32)."""
    cuda_graphs: bool = False
    """On a GPU, capture each training segment's forward and backward of the recurrent core
    into CUDA graphs and replay them (hmrnn.core.fused.graphs); ignored on CPU."""
    val_check_interval: Any = 1.0
    """Validate every this many training batches (int) or fraction of an epoch (float)."""
    limit_val_batches: Any = 1.0
    """Validation batches per validation (int) or fraction of the stream (float)."""
    limit_test_batches: Any = 1.0
    """Test batches (int) or fraction of the test stream (float), for quick runs; the paper's
    numbers need the whole split (1.0). results.json's boundary scores cover the same part."""
    log_every_n_steps: int = 20
    """Log training metrics every this many steps."""
    boundary_diagnostics: int = 8
    """At every logging step, the boundary detectors' diagnostics (hmrnn.core.diagnostics:
    firing rate, the z row's pre-activation, the gradient reaching z by path) on this many
    sequences of the batch just trained, logged as ``diag/...``; 0 turns them off."""
    checkpoint_every_n_steps: int = 0
    """Also save ``last.ckpt`` every this many training steps (0: after each validation only)."""
    deterministic: bool = False
    """torch deterministic algorithms (for bit-exact reruns)."""
    nonfinite: str = "stop"
    """A NaN or inf training loss or gradient: ``stop`` the run with an error naming the step
    (``last.ckpt`` keeps the last good state), or ``skip`` the batch (no update) and count it
    (``train/skipped_batches``)."""
    slurm_requeue: bool = True
    """In a SLURM job, SIGUSR1 (sent before the time limit: ``#SBATCH --signal=B:USR1@120`` with
    ``exec python -m hmrnn.train ...`` in the script, or ``--signal=USR1@120`` with ``srun``)
    saves ``last.ckpt`` and requeues the job (``scontrol requeue``); the requeued job runs the
    same command, which continues the run. Elsewhere SIGUSR1 saves and stops, as SIGTERM does."""
    min_free_mb: int = 100
    """Before each checkpoint (and at most every 5 s) the run checks the free space where it
    writes: with less than the last checkpoint's size plus this many MB it stops with an error
    naming the folder, keeping the checkpoints it has (W&B's writer fails silently on a full
    disk). 0 turns the check off."""
    enable_progress_bar: bool = True
    """Show the progress bar."""


@dataclass
class LoggerConfig:
    """Weights & Biases (plus a CSV log, always)."""

    mode: str = "offline"
    """``online`` (needs an account), ``offline`` (``wandb sync`` uploads later) or ``disabled``."""
    project: str = "hmrnn"
    """W&B project."""
    entity: str = ""
    """W&B entity (team or user); empty for the default."""
    tags: list[str] = field(default_factory=list)
    """W&B tags."""


@dataclass
class Config:
    """A whole run."""

    experiment: str = ""
    """Name of the experiment file in ``conf/experiment`` that this run started from."""
    seed: int = 0
    """Seed of every random number generator."""
    out_dir: str = "runs"
    """Folder under which each run gets its own folder."""
    run_name: str = ""
    """Name of the run's folder; empty: ``<experiment>-<model>-<date>-<time>``."""
    resume: str = ""
    """A run folder or checkpoint file to continue from; empty starts afresh."""
    test: bool = True
    """Evaluate on the test split after training."""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    slope: SlopeConfig = field(default_factory=SlopeConfig)
    regularizer: RegularizerConfig = field(default_factory=RegularizerConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)


class ConfigError(ValueError):
    """A setting a user gave is wrong; the message names the key and the fix."""


CHOICES: dict[str, tuple[str, ...] | Registry] = {
    "data.iam_split": ("random", "official"),
    "model.name": MODELS,
    "model.boundary": ESTIMATORS,
    "model.fixed_source": FIXED_SOURCES,
    "data.name": DATASETS,
    "logger.mode": LOGGER_MODES,
    "trainer.accelerator": ACCELERATORS,
    "trainer.precision": PRECISIONS,
    "trainer.nonfinite": ("stop", "skip"),
}
"""Settings with a fixed set of values; the registries' (models, data sets, estimators) include
whatever was registered at the time of the check."""


def choices_of(key: str) -> tuple[str, ...]:
    """The valid values of the setting ``key`` now."""
    options = CHOICES[key]
    return options.names() if isinstance(options, Registry) else options


POSITIVE: tuple[str, ...] = (
    "model.hidden_size",
    "model.num_layers",
    "model.embedding_dim",
    "model.output_size",
    "data.batch_size",
    "data.bptt",
    "data.train_chars",
    "data.valid_chars",
    "data.test_chars",
    "optim.lr",
    "trainer.num_nodes",
    "trainer.log_every_n_steps",
    "trainer.ddp_timeout_s",
)


def get(config: Any, dotted: str) -> Any:
    """``get(cfg, "model.hidden_size")``."""
    for part in dotted.split("."):
        config = getattr(config, part)
    return config


def suggest(word: str, options: list[str] | tuple[str, ...]) -> str:
    """`` (did you mean 'x'?)`` for the nearest option, or an empty string."""
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def dotted_keys(schema: Any = Config, prefix: str = "") -> list[str]:
    """Every leaf key of the schema in dotted form: ``model.hidden_size``, ..."""
    keys = []
    for f in fields(schema):
        default = f.default_factory() if callable(f.default_factory) else f.default  # type: ignore[misc]
        if is_dataclass(default):
            keys += dotted_keys(type(default), f"{prefix}{f.name}.")
        else:
            keys.append(prefix + f.name)
    return keys


def validate(config: Config) -> Config:
    """Check choices and ranges; raise :class:`ConfigError` naming the key and the valid values."""
    for key in CHOICES:
        value, options = get(config, key), choices_of(key)
        if value not in options:
            raise ConfigError(unknown_choice(key, value, options))
    for key in POSITIVE:
        if not get(config, key) > 0:
            raise ConfigError(f"{key} must be positive, got {get(config, key)!r}")
    if not 0 < config.optim.plateau_factor <= 1:
        raise ConfigError(
            f"optim.plateau_factor must be in (0, 1], got {config.optim.plateau_factor!r}"
        )
    if config.slope.rate < 0 or config.slope.max_slope < 1:
        raise ConfigError("slope.rate must be >= 0 and slope.max_slope >= 1")
    n_detectors = config.model.num_layers - 1 + int(config.model.top_layer_boundary)
    if config.model.z_bias_init and len(config.model.z_bias_init) != n_detectors:
        raise ConfigError(
            f"model.z_bias_init needs one value per detector layer ({n_detectors} for "
            f"model.num_layers={config.model.num_layers}), got {list(config.model.z_bias_init)!r}"
        )
    if config.optim.warmup_steps < 0 or config.optim.z_lr_scale < 0:
        raise ConfigError(
            "optim.warmup_steps and optim.z_lr_scale must be >= 0, got "
            f"{config.optim.warmup_steps!r} and {config.optim.z_lr_scale!r}"
        )
    reg = config.regularizer
    if reg.weight > 0 and len(reg.target_rates) != n_detectors:
        raise ConfigError(
            f"regularizer.target_rates needs one rate per detector layer ({n_detectors} for "
            f"model.num_layers={config.model.num_layers}), got {list(reg.target_rates)!r}"
        )
    check = config.model.spec.check  # what the chosen model cannot take
    if check is not None:
        check(config)
    if any(not 0 <= r <= 1 for r in reg.target_rates):
        raise ConfigError(f"regularizer.target_rates must lie in [0, 1], got {reg.target_rates}")
    return config


def from_dict(schema: type, data: dict[str, Any]) -> Any:
    """Rebuild a (nested) config dataclass from ``dataclasses.asdict`` output."""
    known = {f.name: f for f in fields(schema)}
    unknown = set(data) - set(known)
    if unknown:
        raise ConfigError(f"unknown keys {sorted(unknown)} for {schema.__name__}")
    kwargs = {}
    for name, value in data.items():
        f = known[name]
        default = f.default_factory() if callable(f.default_factory) else f.default  # type: ignore[misc]
        if is_dataclass(default) and isinstance(value, dict):
            value = from_dict(type(default), value)
        kwargs[name] = value
    return schema(**kwargs)
