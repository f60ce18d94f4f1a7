"""Draw pen trajectories (dx, dy, pen_up) as SVG and PNG, strokes optionally coloured by segment.

    strokes = to_strokes(points)                # absolute coordinates, split at pen-up
    write_svg(points, "sample.svg")
    write_png(points, "sample.png", segments=segment_colours(boundaries))
    write_png_panels(points, "both.png", [("pen-up", true), ("layer 2", model)], title="run")

Coordinates are IAM-OnDB's: y grows downwards, as on a screen and in SVG.
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np

from hmrnn.io import atomic_write

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2")


def to_strokes(points: np.ndarray) -> list[np.ndarray]:
    """(N, 3) offsets with pen_up flags -> list of (n_i, 2) absolute-coordinate strokes.

    A stroke ends at a point whose pen_up is 1 (that point included).
    """
    points = np.asarray(points, dtype=np.float64)
    xy = np.cumsum(points[:, :2], axis=0)
    ends = np.flatnonzero(points[:, 2] > 0.5) + 1
    pieces = np.split(xy, ends)
    return [p for p in pieces if len(p)]


def segment_colours(boundaries: np.ndarray) -> np.ndarray:
    """(N,) 0/1 boundaries -> (N,) index of the segment each point belongs to.

    A boundary at point t closes the segment: point t + 1 starts the next one.
    """
    b = (np.asarray(boundaries) > 0.5).astype(np.int64)
    return np.concatenate([[0], np.cumsum(b)[:-1]])


def _pieces(points: np.ndarray, segments: np.ndarray | None) -> list[tuple[np.ndarray, int]]:
    """Polylines with a colour index: split at pen-up, and at segment changes when given."""
    points = np.asarray(points, dtype=np.float64)
    xy = np.cumsum(points[:, :2], axis=0)
    seg = np.zeros(len(points), dtype=np.int64) if segments is None else np.asarray(segments)
    out, start = [], 0
    for t in range(len(points)):
        last = t == len(points) - 1
        if last or points[t, 2] > 0.5 or seg[t + 1] != seg[t]:
            # a segment change inside a stroke keeps the line connected to the next point
            stop = t + 1 if (last or points[t, 2] > 0.5) else t + 2
            out.append((xy[start:stop], int(seg[t])))
            start = t + 1
    return [(p, s) for p, s in out if len(p)]


def svg_text(
    points: np.ndarray, segments: np.ndarray | None = None, width: float = 2.0, title: str = ""
) -> str:
    """An SVG document with one polyline per stroke (and per segment when given), and
    ``title`` as its ``<title>`` (what a viewer shows as the document's name)."""
    pieces = _pieces(points, segments)
    xy = np.concatenate([p for p, _ in pieces]) if pieces else np.zeros((1, 2))
    lo, hi = xy.min(0) - 10, xy.max(0) + 10
    size = hi - lo
    lines = [
        '<svg xmlns="http://www.w3.org/2000/svg" '
        f'viewBox="{lo[0]:.1f} {lo[1]:.1f} {size[0]:.1f} {size[1]:.1f}" '
        f'width="{size[0]:.0f}" height="{size[1]:.0f}">',
        f'<rect x="{lo[0]:.1f}" y="{lo[1]:.1f}" width="{size[0]:.1f}" height="{size[1]:.1f}" '
        'fill="white"/>',
    ]
    if title:
        lines.insert(1, f"<title>{html.escape(title)}</title>")
    for piece, s in pieces:
        coords = " ".join(f"{x:.1f},{y:.1f}" for x, y in piece)
        colour = PALETTE[s % len(PALETTE)] if segments is not None else "black"
        lines.append(
            f'<polyline points="{coords}" fill="none" stroke="{colour}" '
            f'stroke-width="{width}" stroke-linecap="round" stroke-linejoin="round"/>'
        )
    lines.append("</svg>")
    return "\n".join(lines) + "\n"


def write_svg(
    points: np.ndarray, path: str | Path, segments: np.ndarray | None = None, title: str = ""
) -> None:
    atomic_write(path, svg_text(points, segments, title=title))


def draw_on(ax: object, points: np.ndarray, segments: np.ndarray | None = None) -> None:
    """Draw the trajectory on matplotlib axes: y pointing down, equal aspect, no frame."""
    for piece, seg in _pieces(points, segments):
        colour = PALETTE[seg % len(PALETTE)] if segments is not None else "black"
        ax.plot(piece[:, 0], piece[:, 1], color=colour, linewidth=1.5, solid_capstyle="round")  # type: ignore[attr-defined]
    ax.set_aspect("equal")  # type: ignore[attr-defined]
    ax.invert_yaxis()  # type: ignore[attr-defined]
    ax.axis("off")  # type: ignore[attr-defined]


def _png_bytes(fig: object, dpi: int) -> bytes:
    import io

    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, facecolor="white")  # type: ignore[attr-defined]
    plt.close(fig)  # type: ignore[arg-type]
    return buffer.getvalue()


def write_png(
    points: np.ndarray, path: str | Path, segments: np.ndarray | None = None, dpi: int = 100
) -> None:
    """A PNG of the trajectory (matplotlib, Agg backend), y axis pointing down."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pieces = _pieces(points, segments)
    xy = np.concatenate([p for p, _ in pieces]) if pieces else np.zeros((1, 2))
    span = np.maximum(xy.max(0) - xy.min(0), 1.0)
    fig = plt.figure(
        figsize=(max(2.0, 8 * span[0] / span.max()), max(1.0, 8 * span[1] / span.max()))
    )
    draw_on(fig.add_axes((0, 0, 1, 1)), points, segments)
    atomic_write(path, _png_bytes(fig, dpi))


TITLE_BAND = 0.45  # inches of the figure title of write_png_panels
LEGEND_BAND = 0.6  # inches of its colour legend
PANEL_TITLE = 0.35  # inches above each panel for its title


def panel_layout(
    points: np.ndarray, panels: int
) -> tuple[tuple[float, float], list[tuple[float, float, float, float]]]:
    """(figure size in inches, axes rectangle (left, bottom, width, height) in figure fractions
    of each panel, top to bottom) for :func:`write_png_panels`: the title, the legend, then the
    panels, each 10 inches wide and as tall as the trajectory's aspect asks."""
    xy = np.cumsum(np.asarray(points, dtype=np.float64)[:, :2], axis=0)
    span = np.maximum(xy.max(0) - xy.min(0), 1.0)
    width, height = 10.0, max(1.0, 10.0 * span[1] / span[0])
    total = TITLE_BAND + LEGEND_BAND + panels * (PANEL_TITLE + height) + 0.1
    rects = []
    for i in range(panels):
        bottom = TITLE_BAND + LEGEND_BAND + (i + 1) * (PANEL_TITLE + height)  # from the top
        rects.append((0.02, 1 - bottom / total, 0.96, height / total))
    return (width, total), rects


def write_png_panels(
    points: np.ndarray,
    path: str | Path,
    panels: list[tuple[str, np.ndarray | None]],
    dpi: int = 100,
    title: str = "",
) -> None:
    """The same trajectory drawn once per (panel title, segments) panel, stacked top to bottom
    under the figure's ``title`` and a legend of the segment colours (segment 1, 2, ... in the
    order drawn; the palette repeats after its last colour)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    size, rects = panel_layout(points, len(panels))
    fig = plt.figure(figsize=size)
    for rect, (name, segments) in zip(rects, panels, strict=True):
        ax = fig.add_axes(rect)
        draw_on(ax, points, segments)
        ax.set_title(name, fontsize=10)
    top = size[1]
    fig.text(0.01, 1 - TITLE_BAND / 2 / top, title, va="center", fontsize=12, weight="bold")
    used = max([int(np.max(s)) + 1 for _, s in panels if s is not None and len(s)] or [1])
    count = min(used, len(PALETTE))
    handles = [Line2D([], [], color=PALETTE[i], linewidth=3) for i in range(count)]
    labels = [str(i + 1) for i in range(count)]
    repeat = f" ({count} colours, repeated: {used} segments)" if used > len(PALETTE) else ""
    fig.legend(
        handles,
        labels,
        loc="center",
        bbox_to_anchor=(0.5, 1 - (TITLE_BAND + LEGEND_BAND / 2) / top),
        ncol=count,
        frameon=False,
        fontsize=8,
        title=f"colour = segment number, in drawing order{repeat}",
        title_fontsize=9,
    )
    atomic_write(path, _png_bytes(fig, dpi))
