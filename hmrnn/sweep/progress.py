"""A running run's progress, read from its run folder: the step and epoch from its CSV log, the
latest and best value of the sweep's metric, the time so far and an ETA."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from hmrnn.report.runs import read_csv_history

QUIET_SECONDS = 300.0  # a progress line that says nothing new is repeated at most this often


@dataclass
class Progress:
    """What a run's CSV log says so far (its training and validation rows)."""

    metric: str
    """The validation metric followed: the sweep's, else ``val/ll`` if logged, else ``val/bpc``."""
    step: int | None = None
    """Optimiser steps done (the CSV's step counts from 0); None before the first row."""
    epoch: int | None = None
    steps_per_epoch: int | None = None
    """Once epoch 0 has ended: its last logged step + 1 (exact when it validated at its end)."""
    latest: float | None = None
    best: float | None = None


def read_progress(run_dir: Path, metric: str = "", goal: str = "") -> Progress:
    """A run's progress from ``csv/metrics.csv``; ``goal`` (minimize / maximize) picks the best
    value, by default the larger log-likelihood or the smaller BPC."""
    rows = [
        row
        for row in read_csv_history(run_dir / "csv" / "metrics.csv")
        if "step" in row and any(k.startswith(("train/", "val/")) for k in row)
    ]
    if not metric:
        metric = "val/ll" if any("val/ll" in row for row in rows) else "val/bpc"
    progress = Progress(metric)
    if not rows:
        return progress
    progress.step = int(max(row["step"] for row in rows)) + 1
    progress.epoch = max((int(row["epoch"]) for row in rows if "epoch" in row), default=None)
    first_epoch = [row["step"] for row in rows if row.get("epoch") == 0]
    if progress.epoch and first_epoch:
        progress.steps_per_epoch = int(max(first_epoch)) + 1
    values = [row[metric] for row in rows if metric in row]
    if values:
        maximize = (goal or ("maximize" if metric.endswith("/ll") else "minimize")) == "maximize"
        progress.latest = values[-1]
        progress.best = max(values) if maximize else min(values)
    return progress


def planned_steps(run_dir: Path, progress: Progress) -> tuple[int | None, bool]:
    """The steps a run trains for, and whether that number is exact: ``trainer.max_steps`` of
    its ``config.yaml``, or ``max_epochs`` x the steps of an epoch once one has ended (an
    estimate); (None, False) while neither is known."""
    try:
        trainer = yaml.safe_load((run_dir / "config.yaml").read_text())["trainer"]
        max_steps, max_epochs = int(trainer["max_steps"]), int(trainer["max_epochs"])
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError):
        return None, False
    by_epochs = None
    if max_epochs > 0 and progress.steps_per_epoch:
        by_epochs = max_epochs * progress.steps_per_epoch
    if max_steps > 0 and (by_epochs is None or max_steps <= by_epochs):
        return max_steps, True
    return by_epochs, False


@dataclass
class Watch:
    """One launch of a run, as its progress lines follow it (times from ``time.time()``)."""

    started: float
    before: float = 0.0
    """Seconds the run's earlier launches took (an interrupted run resumed)."""
    base: tuple[int, float] | None = None
    """(step, time) first seen in this launch's log: the ETA's rate counts from there."""
    last_line: float = 0.0
    last_shown: tuple[Any, ...] | None = None

    def due(self, now: float, every: float) -> bool:
        """``every`` seconds have passed since the last line."""
        return now - self.last_line >= every

    def news(self, shown: tuple[Any, ...], now: float, every: float) -> bool:
        """Whether a line saying ``shown`` is worth printing now (then it counts as printed):
        it says something new, or QUIET_SECONDS have passed since the last one."""
        if shown == self.last_shown and now - self.last_line < max(every, QUIET_SECONDS):
            return False
        self.last_line, self.last_shown = now, shown
        return True


def progress_text(
    run_dir: Path, watch: Watch, now: float, metric: str = "", goal: str = ""
) -> tuple[tuple[Any, ...], str]:
    """(what the text says that can change, the text): step, metric, elapsed time, ETA."""
    progress = read_progress(run_dir, metric, goal)
    elapsed = f"{duration(watch.before + now - watch.started)} elapsed"
    if progress.step is None:
        return (), f"starting, no step logged yet, {elapsed}"
    total, exact = planned_steps(run_dir, progress)
    # the ETA's rate counts from this launch's first row: its config.yaml is written (and a
    # resumed run's log trimmed back to its checkpoint) when its training starts
    config_time = _mtime(run_dir / "config.yaml")
    if watch.base is None and config_time is not None and config_time >= watch.started - 1:
        watch.base = (progress.step, now)
    parts = [step_text(progress, total, exact)]
    if progress.latest is not None:
        parts.append(f"{progress.metric} {progress.latest:.4f} (best {progress.best:.4f})")
    parts.append(elapsed)
    if total and progress.step >= total:
        parts.append("training done")  # its last validation and the test are left
    elif total and watch.base is not None and progress.step > watch.base[0]:
        rate = (progress.step - watch.base[0]) / max(now - watch.base[1], 1e-9)
        parts.append(f"ETA {duration((total - progress.step) / rate)}")
    return (progress.step, progress.latest), ", ".join(parts)


def step_text(progress: Progress, total: int | None, exact: bool) -> str:
    """``step 15/~30 (epoch 1)``: ``/N`` exact, ``/~N`` an estimate, nothing when unknown."""
    text = f"step {progress.step}"
    if total:
        text += f"/{total}" if exact else f"/~{total}"
    if progress.epoch is not None:
        text += f" (epoch {progress.epoch})"
    return text


def duration(seconds: float | None) -> str:
    """``12s``, ``3m05s``, ``2h07m``; an en dash when unknown."""
    if seconds is None:
        return "–"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None
