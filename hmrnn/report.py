"""Ablation report: one table of every variant, learning curves and boundary-rate plots.

    python -m hmrnn.report runs/sweeps/ptb_ablation_small    # local run folders, offline
    python -m hmrnn.report entity/project/sweep_id           # a W&B sweep (the W&B API)
    python -m hmrnn.report <source> --out report/            # default: <folder>/report, or
                                                             # ./report-<sweep_id>

Writes ``report.md`` (with PNG files beside it), ``report.html`` (self-contained: the plots are
embedded) and ``report.json`` (the table's numbers). A *variant* is a set of runs whose settings
differ only in the seed (and in names and paths); the table gives, per variant, the mean and
standard deviation over its runs of the test metric and of the best validation metric, the
parameters, training characters per second, and per layer the boundary rate and the UPDATE /
COPY / FLUSH fractions on the test split.
"""

from __future__ import annotations

import argparse
import base64
import csv
import html
import io
import json
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hmrnn.config import ConfigError
from hmrnn.io import atomic_write

# settings that never make two runs different variants
IGNORED = ("seed", "run_name", "out_dir", "resume", "test", "experiment")
IGNORED_PREFIXES = ("logger.", "data.local_dir", "data.root", "trainer.enable_progress_bar")


@dataclass
class RunRecord:
    """One run, whatever its source. ``history``: rows of logged metrics with their ``step``."""

    name: str
    config: dict[str, Any]  # flat dotted keys
    metrics: dict[str, float]  # the last value of every metric (test ones included)
    history: list[dict[str, float]] = field(default_factory=list)
    parameters: int | None = None
    chars_per_sec: float | None = None
    agreement: dict[str, float] = field(default_factory=dict)  # "l1/word/tol0" -> F1

    @property
    def handwriting(self) -> bool:
        return self.config.get("data.name") == "iam_ondb"

    @property
    def metric(self) -> str:
        """``bpc`` (lower is better) or ``ll`` (handwriting; higher is better)."""
        return "ll" if self.handwriting else "bpc"

    def best_val(self) -> float | None:
        values = [row[f"val/{self.metric}"] for row in self.history if f"val/{self.metric}" in row]
        if not values:
            return self.metrics.get(f"val/{self.metric}")
        return max(values) if self.handwriting else min(values)


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
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


# ------------------------------------------------------------------------------- sources
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
    records = []
    for run in api.sweep(path).runs:
        if getattr(run, "state", "finished") != "finished":
            continue
        config = dict(run.config)
        nested = config.get("config")  # the LightningModule's hyperparameters: the full config
        flat = flatten(nested) if isinstance(nested, dict) else {}
        flat |= {k: v for k, v in config.items() if "." in k or k in ("seed", "model")}
        if isinstance(flat.get("model"), str):  # a swept group choice (model=lstm)
            flat["model.name"] = flat.pop("model")
        summary = {k: v for k, v in dict(run.summary).items() if isinstance(v, int | float)}
        history = [
            {k: float(v) for k, v in row.items() if isinstance(v, int | float)}
            for row in run.scan_history()
        ]
        for row in history:
            if "trainer/global_step" in row:
                row["step"] = row["trainer/global_step"]
        records.append(
            RunRecord(
                name=run.name,
                config=flat,
                metrics={k: float(v) for k, v in summary.items()},
                history=history,
                parameters=config.get("parameters"),
                chars_per_sec=summary.get("train/chars_per_sec"),
                agreement=agreement_scores({"metrics": summary}),
            )
        )
    return records


# ------------------------------------------------------------------------------ variants
@dataclass
class Variant:
    label: str
    runs: list[RunRecord]

    def values(self, fn: Any) -> list[float]:
        out = [fn(r) for r in self.runs]
        return [float(v) for v in out if v is not None]


# settings only the HM-LSTM variants read, and those only fixed_boundary reads
HM_ONLY = ("model.boundary", "model.top_layer_boundary", "model.grad_through_ops", "slope.")
FIXED_ONLY = ("model.fixed_source", "model.fixed_periods")


def _ignored(key: str, config: dict[str, Any] | None = None) -> bool:
    """Settings that do not make a variant: names and paths, and keys the model ignores."""
    if key in IGNORED or key.startswith(IGNORED_PREFIXES):
        return True
    name = (config or {}).get("model.name")
    if name == "lstm" and key.startswith(HM_ONLY + FIXED_ONLY):
        return True
    return name not in (None, "fixed_boundary") and key.startswith(FIXED_ONLY)


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
        layers = []
        kinds = sorted({key.split("/")[1] for r in v.runs for key in r.agreement})
        for l in range(1, K + 1):
            entry: dict[str, Any] = {}
            for key in ("z_rate", "update", "copy", "flush"):
                got = v.values(lambda r, k=key, l=l: r.metrics.get(f"test/{k}_l{l}"))
                entry[key] = mean_std(got)[0]
            rate = entry["z_rate"]
            entry["segment_length"] = 1 / rate if rate else None  # steps per boundary
            if entry["update"] is not None:  # the paper's count: the layer computes
                entry["updates_per_270"] = 270 * (entry["update"] + entry["flush"])
            entry["f1"] = {
                f"{kind}/tol{tol}": mean_std(
                    v.values(lambda r, key=f"l{l}/{kind}/tol{tol}": r.agreement.get(key))
                )[0]
                for kind in kinds
                for tol in (0, 1)
            }
            layers.append(entry)
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
                "layers": layers,
            }
        )
    return rows


# -------------------------------------------------------------------------------- output
def _fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _pm(mean: float | None, std: float | None, digits: int, n: int) -> str:
    if mean is None:
        return "–"
    return f"{mean:.{digits}f}" + (f" ± {_fmt(std, digits)}" if n > 1 else "")


def table_cells(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Header and cells shared by the Markdown and the HTML table."""
    metric = rows[0]["metric"] if rows else "bpc"
    digits = 1 if metric == "ll" else 3
    name = "log-likelihood / sequence" if metric == "ll" else "BPC"
    K = len(rows[0]["layers"]) if rows else 0
    header = ["variant", "runs", f"test {name}", f"best val {name}", "parameters", "chars/s"]
    header += [f"layer {l} rate · U/C/F" for l in range(1, K)]
    cells = []
    for row in rows:
        line = [
            row["variant"],
            str(len(row["runs"])),
            _pm(row["test_mean"], row["test_std"], digits, len(row["runs"])),
            _pm(row["best_val_mean"], row["best_val_std"], digits, len(row["runs"])),
            "–" if row["parameters"] is None else f"{row['parameters']:,.0f}",
            "–" if row["chars_per_sec"] is None else f"{row['chars_per_sec']:,.0f}",
        ]
        for entry in row["layers"][: K - 1]:  # the top layer has no detector
            if entry["z_rate"] is None:
                line.append("–")
            else:
                ops = "/".join(_fmt(entry[k], 2) for k in ("update", "copy", "flush"))
                line.append(f"{entry['z_rate']:.3f} · {ops}")
        cells.append(line)
    return header, cells


def boundary_cells(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """The second table: per detector layer, F1 against each kind of true boundary (tolerance
    0 / 1 steps; ``word`` and ``word_at_delim``: the two conventions, see ``BOUNDARY_NOTE``)
    and the mean segment length; the paper's updates per 270 steps."""
    hier = [r for r in rows if r["layers"] and r["layers"][0]["z_rate"] is not None]
    if not hier:
        return [], []
    K = len(hier[0]["layers"])
    kinds = sorted({k.split("/")[0] for r in hier for e in r["layers"] for k in e["f1"]})
    header = ["variant"]
    for l in range(1, K):
        header += [f"layer {l} F1 {kind} (tol 0 / 1)" for kind in kinds]
        header.append(f"layer {l} segment length")
    header.append(f"updates per 270 steps (stacked RNN: {270 * K})")
    cells = []
    for row in hier:
        line = [row["variant"]]
        for entry in row["layers"][: K - 1]:
            for kind in kinds:
                f0, f1 = entry["f1"].get(f"{kind}/tol0"), entry["f1"].get(f"{kind}/tol1")
                line.append(f"{_fmt(f0, 2)} / {_fmt(f1, 2)}")
            length = entry["segment_length"]
            line.append(
                "never fires" if length is None and entry["z_rate"] == 0 else _fmt(length, 1)
            )
        counts = [e.get("updates_per_270") for e in row["layers"]]
        line.append(
            "–"
            if None in counts
            else " / ".join(f"{c:.0f}" for c in counts) + f" = {sum(counts):.0f}"
        )
        cells.append(line)
    return header, cells


def markdown_table(rows: list[dict[str, Any]], cells_of: Any = None) -> str:
    header, cells = (cells_of or table_cells)(rows)
    if not header:
        return ""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in line) + " |" for line in cells]
    return "\n".join(lines)


def html_table(rows: list[dict[str, Any]], cells_of: Any = None) -> str:
    header, cells = (cells_of or table_cells)(rows)
    if not header:
        return ""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in line) + "</tr>" for line in cells
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _curve(variant: Variant, key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Steps and the mean / min / max over the variant's runs of ``key`` at the steps that
    every run logged."""
    per_run = []
    for r in variant.runs:
        points = {row["step"]: row[key] for row in r.history if key in row and "step" in row}
        per_run.append(points)
    steps = sorted(set.intersection(*(set(p) for p in per_run))) if per_run else []
    values = np.array([[p[s] for s in steps] for p in per_run]) if steps else np.zeros((0, 0))
    if not steps:
        return np.array([]), np.array([]), np.array([]), np.array([])
    return np.array(steps), values.mean(0), values.min(0), values.max(0)


def plot_png(variants: list[Variant], panels: list[tuple[str, str]], title: str) -> bytes | None:
    """One subplot per (metric key, y label): a line per variant (mean over its runs) with the
    range of its runs shaded. None when no run logged any of the keys."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = [[(v, _curve(v, key)) for v in variants] for key, _ in panels]
    if not any(len(c[1][0]) for panel in curves for c in panel):
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, (key, ylabel), panel in zip(axes[0], panels, curves, strict=True):
        for i, (v, (steps, mean, low, high)) in enumerate(panel):
            if not len(steps):
                continue
            colour = f"C{i % 10}"
            ax.plot(steps, mean, color=colour, label=v.label, marker="o", markersize=3)
            if len(v.runs) > 1:
                ax.fill_between(steps, low, high, color=colour, alpha=0.2)
        ax.set_xlabel("training step")
        ax.set_ylabel(ylabel)
        ax.set_title(key)
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 2), fontsize=8)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.08 + 0.04 * ((len(labels) + 1) // 2), 1, 1))
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, facecolor="white")
    plt.close(fig)
    return buffer.getvalue()


def figures(variants: list[Variant]) -> dict[str, tuple[str, bytes]]:
    """``{file name: (caption, PNG bytes)}``: learning curves and boundary rates."""
    runs = [r for v in variants for r in v.runs]
    metric = runs[0].metric if runs else "bpc"
    unit = "log-likelihood per sequence" if metric == "ll" else "bits per character"
    out: dict[str, tuple[str, bytes]] = {}
    png = plot_png(
        variants,
        [(f"train/{metric}", unit), (f"val/{metric}", unit)],
        "Learning curves (mean over seeds; shaded: their range)",
    )
    if png:
        out["learning_curves.png"] = ("Learning curves", png)
    K = num_layers(runs)
    panels = [(f"val/z_rate_l{l}", "boundary rate") for l in range(1, K)]
    png = plot_png(variants, panels, "Boundary rate per layer on validation") if panels else None
    if png:
        out["boundary_rates.png"] = ("Boundary rates", png)
    return out


BOUNDARY_NOTE = (
    "Test split. F1 of each detector layer's boundaries against the data's own (word ends for "
    "text, pen-up for handwriting, ...), a boundary counting as found within 0 or 1 steps, in "
    "two conventions: 'word' takes the step that reads a word's last symbol as the true "
    "boundary (a detector gets there by predicting the delimiter), 'word_at_delim' the next "
    "step, the one that reads the delimiter (space, end of line, the '.' closing a phrase); "
    "units that end on their own symbol ('phrase', 'line', 'pen_up') have one convention. "
    "fixed_boundary with fixed_source=delimiter fires on the delimiter it has read, so its "
    "fair F1 is the 'word_at_delim' one (against 'word' each of its boundaries is one step "
    "late: a miss at tolerance 0, a hit at 1); a learned detector may follow either. Segment "
    "length: steps per boundary; updates: steps in which each layer computes (UPDATE or "
    "FLUSH) per 270 steps, bottom layer first, as the paper counts them."
)


def write_report(runs: list[RunRecord], out: Path, title: str) -> dict[str, Any]:
    """Write report.md, report.html, report.json and the PNGs into ``out``; the table rows."""
    if not runs:
        raise ConfigError(f"{title}: no finished run (no results.json) to report on")
    variants = group_variants(runs)
    rows = table_rows(variants)
    pictures = figures(variants)
    for name, (_, png) in pictures.items():
        atomic_write(out / name, png)
    metric = rows[0]["metric"]
    note = (
        "Test: the best-validation checkpoint on the whole test split. Best val: the best "
        "validation of each run. Mean ± standard deviation over the variant's runs (seeds). "
        "Layer columns: boundary rate and UPDATE / COPY / FLUSH fractions on the test split."
    )
    if metric == "ll":
        note = note.replace("validation of", "validation log-likelihood of")
    md = [f"# {title}", "", f"{len(runs)} runs, {len(variants)} variants.", "", note, ""]
    md += [markdown_table(rows), ""]
    second = markdown_table(rows, boundary_cells)
    if second:
        md += ["## Boundaries", "", BOUNDARY_NOTE, "", second, ""]
    md += [f"![{caption}]({name})\n" for name, (caption, _) in pictures.items()]
    md += ["## Runs", ""] + [f"- {v.label}: {', '.join(r.name for r in v.runs)}" for v in variants]
    atomic_write(out / "report.md", "\n".join(md) + "\n")
    images = "".join(
        f'<h2>{html.escape(caption)}</h2><img alt="{html.escape(caption)}" '
        f'src="data:image/png;base64,{base64.b64encode(png).decode()}">'
        for caption, png in pictures.values()
    )
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #bbb;padding:4px 8px;text-align:right}td:first-child,"
        "th:first-child{text-align:left}img{max-width:100%}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p>{len(runs)} runs, {len(variants)} variants.</p>"
        f"<p>{html.escape(note)}</p>{html_table(rows)}"
        + (
            f"<h2>Boundaries</h2><p>{html.escape(BOUNDARY_NOTE)}</p>"
            f"{html_table(rows, boundary_cells)}"
            if boundary_cells(rows)[0]
            else ""
        )
        + f"{images}</body></html>"
    )
    atomic_write(out / "report.html", page)
    atomic_write(out / "report.json", json.dumps(rows, indent=2))
    return {"rows": rows, "files": sorted(["report.md", "report.html", "report.json", *pictures])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hmrnn.report", description=__doc__.split("\n")[0]
    )
    parser.add_argument("source", help="a folder of runs, or a W&B sweep entity/project/sweep_id")
    parser.add_argument("--out", type=Path, default=None, help="folder to write the report into")
    args = parser.parse_args(argv)
    source = Path(args.source)
    try:
        if source.is_dir():
            runs, out = local_runs(source), args.out or source / "report"
        elif args.source.count("/") == 2 and not source.exists():
            runs = wandb_runs(args.source)
            out = args.out or Path(f"report-{args.source.rsplit('/', 1)[-1]}")
        else:
            raise ConfigError(
                f"{args.source} is neither a folder of runs nor a W&B sweep path "
                "(entity/project/sweep_id)"
            )
        result = write_report(runs, out, f"Report: {args.source}")
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(markdown_table(result["rows"]))
    print(f"\nwrote {', '.join(str(out / f) for f in result['files'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
