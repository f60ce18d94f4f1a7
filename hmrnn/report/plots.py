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


def plot_png(
    variants: list[Variant], panels: list[tuple[str, str]], title: str, log: bool = False
) -> bytes | None:
    """One subplot per (metric key, y label): a line per variant (mean over its runs) with the
    range of its runs shaded; ``log``: a logarithmic y axis where every value is positive. None
    when no run logged any of the keys."""
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
        lows = [low for _, (steps, _, low, _) in panel if len(steps)]
        if log and lows and all((low > 0).all() for low in lows):
            ax.set_yscale("log")
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
    out.update(diagnostic_figures(variants, K))
    return out


DYNAMICS = [
    ("z_rate", "firing rate (training batch)"),
    ("sz_mean", "mean of s_z"),
    ("sz_std", "spread of s_z"),
    ("sz_linear", "fraction with |slope s_z| < 1"),
]
SOURCES = [
    ("sz_recurrent", "from the layer's own h"),
    ("sz_top_down", "from the layer above (gated)"),
    ("sz_bottom_up", "from the layer below or the input (gated)"),
]
GRADIENTS = [
    ("grad_sz", "mean |d loss / d s_z|"),
    ("grad_masks", "through the operation masks"),
    ("grad_top_down", "through the top-down gate"),
    ("grad_bottom_up", "through the bottom-up gate"),
]


def diagnostic_figures(variants: list[Variant], K: int) -> dict[str, tuple[str, bytes]]:
    """Per detector layer, its dynamics over training, s_z's parts by source and the gradient
    reaching its z by path (the ``diag/`` metrics of hmrnn.core.diagnostics), where the runs
    logged them."""
    out: dict[str, tuple[str, bytes]] = {}
    for l in range(1, K + 1):
        figures = [  # file, caption, panels, title, log scale
            ("detector", f"Layer {l}'s detector", DYNAMICS,
             f"Layer {l}'s boundary detector: firing and the z row's pre-activation s_z", False),
            ("sz_sources", f"Layer {l}'s s_z by source", SOURCES,
             f"Layer {l}: the mean of s_z's part from each input (the bias is the rest)", False),
            ("gradients", f"Layer {l}'s gradients by path", GRADIENTS,
             f"Layer {l}: the gradient reaching z, by path (mean absolute value)", True),
        ]  # fmt: skip
        for name, caption, panels, title, log in figures:
            png = plot_png(
                variants, [(f"diag/{key}_l{l}", label) for key, label in panels], title, log=log
            )
            if png:
                out[f"{name}_l{l}.png"] = (caption, png)
    return out
