"""Early termination (the sweep file's ``early_terminate``, Hyperband): the engine's stop rule
over the runs' validation histories, read from their CSV logs."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from hmrnn.report.runs import read_csv_history
from hmrnn.sweep.engine import engine, engine_run


def read_history(run_dir: Path, metric: str) -> list[dict[str, float]]:
    """The validation rows of a run's CSV log that hold ``metric``, in order."""
    rows = read_csv_history(run_dir / "csv" / "metrics.csv")
    return [{metric: row[metric], "_step": row.get("step", 0.0)} for row in rows if metric in row]


def should_stop(config: dict[str, Any], runs: list[dict[str, Any]], run: dict[str, Any]) -> bool:
    """The file's rule over the histories so far says stop ``run`` (one of ``runs``, its
    history read again from its log first); never without a rule or a metric."""
    metric = config.get("metric", {}).get("name", "")
    if "early_terminate" not in config or not metric:
        return False
    run["history"] = read_history(Path(run["run_dir"]), metric)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stop = engine().stop_runs(config, [engine_run(r) for r in runs])
    return any(r.name == run["id"] for r in stop)
