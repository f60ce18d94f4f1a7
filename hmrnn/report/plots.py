"""The report's figures: learning curves and per-layer boundary rates over training, one line
per variant (the mean over its runs) with the range of its runs shaded."""

from __future__ import annotations

import io

import numpy as np

from hmrnn.report.variants import Variant, num_layers


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
