"""One line per run of a hierarchy sweep (issue 18, docs/hierarchy.md): the swept settings, test
BPC, the detectors' test firing rates and F1 against the true boundaries, and how layer 2's
detector went over training (its z-row pre-activation's mean and the fraction of it inside the
hard sigmoid's window, first and last logged, from the ``diag/`` metrics), and each layer's updates
per 270 steps (the paper's PTB measure: 270 / 56 / 9). Layer 2's phrase-level truth is the
corpus's phrase ends on the synthetic corpus and its line ends (one sentence a line) on PTB-char.

    python benchmarks/hierarchy_summary.py runs/sweeps/hierarchy_lr [more sweep folders]

Prints a Markdown table (the run folders' results.json and csv/metrics.csv; the sweep's
sweep.json names what was swept; layer 2's F1 against word ends too: where the hierarchy
emerges one layer up), then one line per setting over its seeds: how many seeds end
with layer 2 sparse (firing on 2-30 % of test steps) and how many meet issue 18's criteria
(layer 1's F1 against word ends >= 0.8 at tolerance 0; layer 2 sparse with F1 against phrase
ends >= 0.5 at tolerance 0), with the mean and range of test BPC and of the F1 scores.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

SPARSE = (0.02, 0.30)  # layer 2's firing rate that counts as sparse (issue 18)
WORD_F1, PHRASE_F1 = 0.8, 0.5  # issue 18's criteria, at tolerance 0


def swept(folder: Path) -> dict[str, dict[str, str]]:
    """Run id -> the swept settings, from the sweep's state file."""
    state = json.loads((folder / "sweep.json").read_text())
    out = {}
    for run in state.get("runs", []):
        values = run.get("values") or run.get("config") or {}
        out[str(run.get("id"))] = {k: str(v) for k, v in values.items() if k != "seed"} | {
            "seed": str(values.get("seed", ""))
        }
    return out


def diag_ends(path: Path, key: str) -> tuple[float | None, float | None]:
    """The first and last logged values of ``key`` in a run's metrics.csv."""
    values = []
    with open(path) as f:
        for row in csv.DictReader(f):
            if row.get(key):
                values.append(float(row[key]))
    return (values[0], values[-1]) if values else (None, None)


def fmt(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def f1(boundaries: dict, key: str) -> str:
    """The F1 score of results.json's ``boundaries[key]``, formatted."""
    return fmt(boundaries.get(key, {}).get("f1"))


def phrase_f1(boundaries: dict, tolerance: int) -> float | None:
    """Layer 2's F1 against the data's phrase-level boundaries: phrase ends (the synthetic
    corpus) or line ends (PTB-char: a sentence a line); None when the data has neither."""
    for kind in ("phrase", "line"):
        key = f"l2/{kind}/tol{tolerance}"
        if key in boundaries:
            return boundaries[key].get("f1")
    return None


def updates(results: dict) -> str:
    """Each layer's updates per 270 steps (results.json's ``update_counts``)."""
    per_layer = results.get("update_counts", {}).get("per_layer")
    return " / ".join(f"{u:.0f}" for u in per_layer) if per_layer else "-"


def spread(values: list[float], digits: int = 2) -> str:
    """``mean (min-max)`` of the values that are known."""
    known = [v for v in values if v is not None]
    if not known:
        return "-"
    mean = sum(known) / len(known)
    return f"{mean:.{digits}f} ({min(known):.{digits}f}-{max(known):.{digits}f})"


def by_setting(rows: list[dict]) -> list[str]:
    """One line per sweep and setting (the swept values but the seed) over its runs."""
    cells: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        cells.setdefault(row["setting"], []).append(row)
    lines = [
        "| sweep | settings | seeds | test BPC | layer 2 sparse | meets criteria "
        "| F1 word l1 tol 0 | F1 phrase / line l2 tol 0 | F1 word l2 tol 0 |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for (sweep, setting), runs in sorted(cells.items()):
        sparse = [
            r for r in runs if r["rate2"] is not None and SPARSE[0] <= r["rate2"] <= SPARSE[1]
        ]
        meets = [
            r for r in sparse if (r["word"] or 0) >= WORD_F1 and (r["phrase"] or 0) >= PHRASE_F1
        ]
        lines.append(
            f"| {sweep} | {setting or '(default)'} | {len(runs)} "
            f"| {spread([r['bpc'] for r in runs], 3)} | {len(sparse)} | {len(meets)} "
            f"| {spread([r['word'] for r in runs])} "
            f"| {spread([r['phrase'] for r in runs])} | {spread([r['word2'] for r in runs])} |"
        )
    return lines


def main() -> None:
    rows = []
    lines = [
        "| run | settings | test BPC | rate l1 / l2 | F1 word l1 (tol 0 / 1) "
        "| F1 phrase / line l2 (tol 0 / 1) | F1 word l2 (tol 0) | updates per 270 "
        "| s_z l2 mean first / last | in window l2 first / last |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in sys.argv[1:]:
        folder = Path(name)
        settings = swept(folder) if (folder / "sweep.json").is_file() else {}
        for run_dir in sorted(p.parent for p in folder.glob("*/results.json")):
            results = json.loads((run_dir / "results.json").read_text())
            m, b = results["metrics"], results.get("boundaries", {})
            # a sweep's run folders end in the run id; other folders keep their whole name
            run_id = run_dir.name.rsplit("-", 1)[-1] if settings else run_dir.name
            values = settings.get(run_id, {})
            setting = ", ".join(f"{k}={v}" for k, v in values.items())
            metrics = run_dir / "csv" / "metrics.csv"
            mean = diag_ends(metrics, "diag/sz_mean_l2")
            window = diag_ends(metrics, "diag/sz_linear_l2")

            lines.append(
                f"| {run_id} | {setting} | {m.get('test/bpc', float('nan')):.3f} "
                f"| {fmt(m.get('test/z_rate_l1'))} / {fmt(m.get('test/z_rate_l2'))} "
                f"| {f1(b, 'l1/word/tol0')} / {f1(b, 'l1/word/tol1')} "
                f"| {fmt(phrase_f1(b, 0))} / {fmt(phrase_f1(b, 1))} "
                f"| {f1(b, 'l2/word/tol0')} | {updates(results)} "
                f"| {fmt(mean[0])} / {fmt(mean[1])} | {fmt(window[0])} / {fmt(window[1])} |"
            )
            rows.append(
                {
                    "setting": (
                        folder.name,
                        ", ".join(f"{k}={v}" for k, v in values.items() if k != "seed"),
                    ),
                    "bpc": m.get("test/bpc"),
                    "rate2": m.get("test/z_rate_l2"),
                    "word": b.get("l1/word/tol0", {}).get("f1"),
                    "phrase": phrase_f1(b, 0),
                    "word2": b.get("l2/word/tol0", {}).get("f1"),
                }
            )
    print("\n".join([*lines, "", *by_setting(rows)]))


if __name__ == "__main__":
    main()
