"""Run folders and resuming: where a run lives, what ``resume=`` continues from, and the same
command started again (a plain restart, a SLURM requeue) continuing its run.

A run folder ``<out_dir>/<run_name>`` holds ``config.yaml``, ``checkpoints/`` (``last.ckpt``,
``previous.ckpt``, ``best.ckpt``), ``csv/metrics.csv``, ``wandb/`` and, once finished,
``results.json``. A finished run is never rewritten.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import io
import os
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from hmrnn.compose import compose, config_error, split_arguments
from hmrnn.config import Config, ConfigError, validate
from hmrnn.io import atomic_write
from hmrnn.lit.checkpoint_io import (
    CheckpointError,
    read_checkpoint,
    run_folder_of,
)
from hmrnn.run.names import default_run_name, sweep_run_id


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
    selected, overrides = split_arguments(argv)
    resume = next((a.split("=", 1)[1] for a in overrides if a.startswith("resume=")), "")
    if not resume:
        config, cfg = compose(argv)
        return config, cfg, None
    run_dir, ckpt = resolve_resume(resume)
    if (run_dir / "results.json").is_file():
        best = run_dir / "checkpoints" / "best.ckpt"
        raise ConfigError(
            f"resume={resume!r}: the run in {run_dir} has finished (results.json) and a finished "
            f"run is never rewritten; evaluate its model with python -m hmrnn.evaluate {best}, "
            "or start a new run"
        )
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
    keep_choices(saved_config, config, selected, saved)
    config.resume = str(ckpt)
    config.run_name = run_dir.name
    config.out_dir = str(run_dir.parent)
    return config, cfg, ckpt


def keep_choices(saved: Config, new: Config, selected: dict[str, str], where: Path) -> None:
    """A resumed run keeps its experiment, model and data (group choices and settings): the
    checkpoint's network and data position need them. ConfigError naming the first change."""
    chosen = {"experiment": saved.experiment, "model": saved.model.name, "data": saved.data.name}
    for group, name in selected.items():
        if name != chosen[group]:
            raise ConfigError(
                f"{group}={name!r} differs from the resumed run's {chosen[group]!r} ({where}); "
                f"a resumed run keeps its {group}: leave {group}= out"
            )
    for section in ("model", "data"):
        old = dataclasses.asdict(getattr(saved, section))
        now = dataclasses.asdict(getattr(new, section))
        for key in old:
            if old[key] != now[key]:
                raise ConfigError(
                    f"{section}.{key}={now[key]!r} differs from the resumed run's "
                    f"{old[key]!r} ({where}); a resumed run keeps its model and data settings"
                )


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
    if saved.model.cell == "lstm" and saved.model.match_parameters:
        ignored.add("model.hidden_size")
    a, b = flat(dataclasses.asdict(saved)), flat(dataclasses.asdict(new))
    keys = [k for k in a if k not in ignored and a[k] != b.get(k)]
    return {k: (a[k], b.get(k)) for k in keys}


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
