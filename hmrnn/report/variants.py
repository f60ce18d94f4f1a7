"""Grouping runs into variants (runs that differ only in the seed, names and paths, or in
settings their model does not read) and the numbers of the report's table."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from hmrnn.registry import MODELS
from hmrnn.report.runs import RunRecord

# settings that never make two runs different variants
IGNORED = ("seed", "run_name", "out_dir", "resume", "test", "experiment")
IGNORED_PREFIXES = ("logger.", "data.local_dir", "data.root", "trainer.enable_progress_bar")


@dataclass
class Variant:
    label: str
    runs: list[RunRecord]

    def values(self, fn: Callable[[RunRecord], Any]) -> list[float]:
        """``fn`` of each run, those that are not None."""
        out = [fn(r) for r in self.runs]
        return [float(v) for v in out if v is not None]


def model_ignores(name: Any) -> tuple[str, ...]:
    """The dotted-key prefixes model ``name`` does not read (its registry entry's ``ignores``);
    none for an unknown or missing name."""
    if not isinstance(name, str) or name not in MODELS:
        return ()
    return MODELS.get(name).ignores


def _ignored(key: str, config: dict[str, Any] | None = None) -> bool:
    """Settings that do not make a variant: names and paths, and keys the model ignores."""
    if key in IGNORED or key.startswith(IGNORED_PREFIXES):
        return True
    return key.startswith(model_ignores((config or {}).get("model.name")))


def group_variants(runs: list[RunRecord]) -> list[Variant]:
    """Runs that differ only in ignored settings form one variant; the label names the
    settings that differ between variants (``model.name=lstm model.hidden_size=148``)."""
    keys = sorted({k for r in runs for k in r.config if not _ignored(k)})

    def signature(r: RunRecord) -> tuple:
        return tuple(
            "-" if _ignored(k, r.config) else json.dumps(r.config.get(k), sort_keys=True)
            for k in keys
        )

    groups: dict[tuple, list[RunRecord]] = {}
    for r in runs:
        groups.setdefault(signature(r), []).append(r)
    varying = [
        k for i, k in enumerate(keys) if len({sig[i] for sig in groups if sig[i] != "-"}) > 1
    ]
    if "model.name" in varying:  # the model first: it is what an ablation asks about
        varying.remove("model.name")
        varying.insert(0, "model.name")
    variants = []
    for members in groups.values():
        c = members[0].config
        shown = [k for k in varying if not _ignored(k, c)]
        label = " ".join(f"{k}={_show(c.get(k))}" for k in shown) or "all runs"
        variants.append(Variant(label, sorted(members, key=lambda r: r.name)))
    return sorted(variants, key=lambda v: v.label)


def _show(value: Any) -> str:
    return json.dumps(value) if isinstance(value, list | dict) else str(value)


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def num_layers(runs: list[RunRecord]) -> int:
    return max(int(r.config.get("model.num_layers", 0)) for r in runs) if runs else 0


def table_rows(variants: list[Variant]) -> list[dict[str, Any]]:
    """The numbers of the table, one dict per variant (also written as report.json)."""
    K = num_layers([r for v in variants for r in v.runs])
    rows = []
    for v in variants:
        metric = v.runs[0].metric
        test = mean_std(v.values(lambda r, m=metric: r.metrics.get(f"test/{m}")))
        val = mean_std(v.values(lambda r: r.best_val()))
        rows.append(
            {
                "variant": v.label,
                "runs": [r.name for r in v.runs],
                "seeds": [r.config.get("seed") for r in v.runs],
                "metric": metric,
                "test_mean": test[0],
                "test_std": test[1],
                "best_val_mean": val[0],
                "best_val_std": val[1],
                "parameters": mean_std(v.values(lambda r: r.parameters))[0],
                "chars_per_sec": mean_std(v.values(lambda r: r.chars_per_sec))[0],
                "layers": [layer_entry(v, l) for l in range(1, K + 1)],
            }
        )
    return rows


def layer_entry(v: Variant, l: int) -> dict[str, Any]:
    """Layer ``l``'s numbers in a variant (means over its runs): boundary rate, UPDATE / COPY /
    FLUSH fractions, segment length, the paper's update count, F1 per kind of true boundary."""
    entry: dict[str, Any] = {}
    for key in ("z_rate", "update", "copy", "flush"):
        entry[key] = mean_std(v.values(lambda r, k=key: r.metrics.get(f"test/{k}_l{l}")))[0]
    rate = entry["z_rate"]
    entry["segment_length"] = 1 / rate if rate else None  # steps per boundary
    if entry["update"] is not None:  # the paper's count: the layer computes
        entry["updates_per_270"] = 270 * (entry["update"] + entry["flush"])
    kinds = sorted({key.split("/")[1] for r in v.runs for key in r.agreement})
    entry["f1"] = {
        f"{kind}/tol{tol}": mean_std(
            v.values(lambda r, key=f"l{l}/{kind}/tol{tol}": r.agreement.get(key))
        )[0]
        for kind in kinds
        for tol in (0, 1)
    }
    return entry
