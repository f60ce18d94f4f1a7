"""Reading runs: finished run folders (``results.json`` and the CSV log) or a W&B sweep through
the public API, each as a :class:`RunRecord`."""

from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# the validation metrics a larger value of which is better (the rest: smaller is better)
MAXIMIZED = ("ll",)


@dataclass
class RunRecord:
    """One run, whatever its source. ``history``: rows of logged metrics with their ``step``;
    ``monitor``: the validation metric the run chose its best checkpoint by (``val/bpc``,
    ``val/ll``), as results.json records it; empty when not recorded."""

    name: str
    config: dict[str, Any]  # flat dotted keys
    metrics: dict[str, float]  # the last value of every metric (test ones included)
    history: list[dict[str, float]] = field(default_factory=list)
    parameters: int | None = None
    chars_per_sec: float | None = None
    agreement: dict[str, float] = field(default_factory=dict)  # "l1/word/tol0" -> F1
    monitor: str = ""

    @property
    def metric(self) -> str:
        """``bpc`` (lower is better) or ``ll`` (handwriting; higher is better): the recorded
        monitor's, else the one the run logged."""
        if self.monitor:
            return self.monitor.split("/", 1)[-1]
        logged = [*self.metrics, *(key for row in self.history for key in row)]
        return "ll" if any(key in ("val/ll", "test/ll") for key in logged) else "bpc"

    def best_val(self) -> float | None:
        metric = self.metric
        values = [row[f"val/{metric}"] for row in self.history if f"val/{metric}" in row]
        if not values:
            return self.metrics.get(f"val/{metric}")
        return max(values) if metric in MAXIMIZED else min(values)


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested configuration as flat dotted keys: ``{"model": {"name": x}}`` -> ``model.name``."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out |= flatten(value, f"{prefix}{key}.")
        else:
            out[prefix + key] = value
    return out


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def read_csv_history(path: Path) -> list[dict[str, float]]:
    """Lightning's CSV log as rows of the numbers present in each line."""
    if not path.is_file():
        return []
    rows = []
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            values = {k: _number(v) for k, v in row.items() if k and v not in ("", None)}
            rows.append({k: v for k, v in values.items() if v is not None})
    return rows


def local_runs(folder: Path) -> list[RunRecord]:
    """Every finished run (a folder with results.json) under ``folder``."""
    records = []
    for results_path in sorted(folder.rglob("results.json")):
        results = json.loads(results_path.read_text())
        run_dir = results_path.parent
        records.append(
            RunRecord(
                name=results.get("run_name", run_dir.name),
                config=flatten(results.get("config", {})),
                metrics={k: float(v) for k, v in results.get("metrics", {}).items()},
                history=read_csv_history(run_dir / "csv" / "metrics.csv"),
                parameters=results.get("parameters"),
                chars_per_sec=results.get("train_chars_per_sec"),
                agreement=agreement_scores(results),
                monitor=results.get("monitor", ""),
            )
        )
    return records


AGREEMENT_KEY = re.compile(r"^test/(\w+?)_f1_l(\d+)_tol(\d+)$")


def agreement_scores(results: dict[str, Any]) -> dict[str, float]:
    """F1 of each layer against each kind of true boundary on the test split: from
    results.json's one-process evaluation (``boundaries``), else from logged test metrics."""
    out = {key: float(s["f1"]) for key, s in results.get("boundaries", {}).items()}
    for key, value in results.get("metrics", {}).items():
        match = AGREEMENT_KEY.match(key)
        if match:
            kind, layer, tol = match.groups()
            out.setdefault(f"l{layer}/{kind}/tol{tol}", float(value))
    return out


def wandb_runs(path: str, api: Any = None) -> list[RunRecord]:
    """The finished runs of a W&B sweep ``entity/project/sweep_id`` through the public API."""
    if api is None:
        import wandb

        api = wandb.Api()
    return [wandb_record(run) for run in api.sweep(path).runs if _finished(run)]


def _finished(run: Any) -> bool:
    return getattr(run, "state", "finished") == "finished"


def wandb_record(run: Any) -> RunRecord:
    """One W&B run: its configuration as flat dotted keys, its summary and its history."""
    summary = {k: float(v) for k, v in dict(run.summary).items() if isinstance(v, int | float)}
    history = [
        {k: float(v) for k, v in row.items() if isinstance(v, int | float)}
        for row in run.scan_history()
    ]
    for row in history:
        if "trainer/global_step" in row:
            row["step"] = row["trainer/global_step"]
    config = dict(run.config)
    return RunRecord(
        name=run.name,
        config=wandb_config(config),
        metrics=summary,
        history=history,
        parameters=config.get("parameters"),
        chars_per_sec=summary.get("train/chars_per_sec"),
        agreement=agreement_scores({"metrics": summary}),
    )


def wandb_config(config: dict[str, Any]) -> dict[str, Any]:
    """A W&B run's configuration as flat dotted keys: the LightningModule's hyperparameters
    (the full config, under ``config``) and the swept keys beside them."""
    nested = config.get("config")
    flat = flatten(nested) if isinstance(nested, dict) else {}
    flat |= {k: v for k, v in config.items() if "." in k or k in ("seed", "model")}
    if isinstance(flat.get("model"), str):  # a swept group choice (model=lstm)
        flat["model.name"] = flat.pop("model")
    return flat
