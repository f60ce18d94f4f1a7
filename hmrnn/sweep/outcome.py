"""How the runs ended, as the runner says it: a run's outcome line (finished with its test
metric, stopped by Hyperband, failed with its exit code and the last lines of its log) and the
table of all the sweep's runs printed at its end."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from hmrnn.sweep.progress import duration, read_progress

LOG_TAIL_LINES = 15  # lines of a failed run's log shown


def swept_keys(config: dict[str, Any]) -> list[str]:
    """The parameters of a sweep file that vary between runs (every one if none does)."""
    specs = config.get("parameters", {})
    swept = [
        k
        for k, s in specs.items()
        if not (isinstance(s, dict) and ("value" in s or len(s.get("values", [0, 0])) == 1))
    ]
    return swept or list(specs)


def parameters_text(run: dict[str, Any], keys: list[str]) -> str:
    """``model=lstm optim.lr=0.001``: the run's values of ``keys``."""
    values = run.get("values", {})
    return " ".join(f"{k}={_value_text(values[k])}" for k in keys if k in values)


def metrics(run: dict[str, Any], metric: str, goal: str) -> tuple[str, float | None, float | None]:
    """(validation metric, its best value, the test value): results.json's where the run
    finished, else the best value in its CSV log; ``metric``: the sweep's, else the run's."""
    run_dir = Path(run["run_dir"])
    results = _read_json(run_dir / "results.json")
    metric = metric or results.get("monitor", "")
    best = results.get("best_" + metric.replace("/", "_")) if metric else None
    if best is None:
        progress = read_progress(run_dir, metric, goal)
        metric, best = progress.metric, progress.best
    test = results.get("metrics", {}).get("test/" + metric.split("/", 1)[-1])
    return metric, best, test


def line(run: dict[str, Any], head: str, log: Path, metric: str, goal: str) -> str:
    """How a run ended: its state, metrics and time; a failed one's exit code and log tail."""
    metric, best, test = metrics(run, metric, goal)
    took = duration(run.get("wall_seconds"))
    best_text = took if best is None else f"best {metric} {_number(best)}, {took}"
    if run["state"] == "finished":
        return f"{head} finished: test/{metric.split('/', 1)[-1]} {_number(test)}, {best_text}"
    step = read_progress(Path(run["run_dir"]), metric).step
    at = "before its first logged step" if step is None else f"at step {step}"
    if run["state"] == "stopped":
        return f"{head} stopped by Hyperband {at}: {best_text}"
    tail = "".join(f"\n[sweep]   | {line}" for line in log_tail(log))
    return (
        f"{head} failed with exit code {run.get('exit_code')} {at}, {best_text}; "
        f"the last lines of {log}:{tail}"
    )


def status(run: dict[str, Any]) -> str:
    return {
        "finished": "finished",
        "stopped": "stopped (Hyperband)",
        "failed": f"failed (exit {run.get('exit_code')})",
        "running": "interrupted",
    }.get(run["state"], run["state"])


def table(runs: list[dict[str, Any]], keys: list[str], metric: str, goal: str) -> str:
    """Every run of the sweep: name, values of ``keys``, status, best validation and test
    metric, wall time."""
    rows = []
    shown = test_key = ""  # the first run's metric names the columns
    for run in runs:
        run_metric, best, test = metrics(run, metric, goal)
        shown = shown or run_metric
        test_key = "test/" + shown.split("/", 1)[-1]
        wall = run.get("wall_seconds")
        if wall is None:
            wall = _read_json(Path(run["run_dir"]) / "results.json").get("wall_seconds")
        name = Path(run["run_dir"]).name
        cells = [name, parameters_text(run, keys), status(run), _number(best), _number(test)]
        rows.append([*cells, duration(wall)])
    header = ["run", "parameters", "status", f"best {shown}", test_key, "wall"]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    )


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> list[str]:
    """The last non-empty lines of a log (read from its last 64 KiB)."""
    if not path.is_file():
        return []
    with path.open("rb") as f:
        f.seek(max(0, f.seek(0, os.SEEK_END) - 65_536))
        text = f.read().decode("utf-8", errors="replace")
    return [line for line in text.splitlines() if line.strip()][-lines:]


def _number(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def _value_text(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
