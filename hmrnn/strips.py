"""The paper's boundary figures (SPEC section 8) as SVG and PNG: heat strips over text.

    strips = [Strip("z2", z[:, 1]), Strip("z1", z[:, 0])]
    write_strips(text, strips, "boundaries")       # boundaries.svg and boundaries.png

Each text line holds ``per_line`` characters (90, as in the paper); above each character one cell
per strip, grey level = value (white = 1, black = 0), the character printed under its cells.
The geometry is fixed (:data:`CELL` pixels a cell), so the pixel of any cell can be computed
(:func:`cell_centre`), which the image tests use.
"""

from __future__ import annotations

import html
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hmrnn.io import atomic_write

CELL = 12  # pixels per cell, both ways
TEXT_ROW = 16  # pixels of the character row under the cells
GAP = 10  # pixels between text lines
MARGIN = 56  # left margin, for the strip labels


@dataclass
class Strip:
    """One row of cells: ``values`` (N,) in [0, 1] (1 = white), labelled on the left."""

    label: str
    values: np.ndarray


def printable(ch: str) -> str:
    """The glyph shown for a symbol: itself, or a stand-in for end of line and controls."""
    if ch == "\n":
        return "¶"
    if ch == " ":
        return "␣"
    return ch if ch.isprintable() else "·"


def normalise(values: np.ndarray) -> np.ndarray:
    """Scale to [0, 1] over the excerpt (a constant strip becomes mid-grey)."""
    v = np.asarray(values, dtype=np.float64)
    span = v.max() - v.min() if len(v) else 0.0
    return np.full_like(v, 0.5) if span <= 0 else (v - v.min()) / span


def geometry(n: int, rows: int, per_line: int) -> tuple[int, int, int]:
    """(width, height, lines) in pixels for n characters and ``rows`` strips."""
    lines = max(1, -(-n // per_line))
    block = rows * CELL + TEXT_ROW + GAP
    return MARGIN + per_line * CELL, lines * block, lines


def cell_centre(t: int, row: int, rows: int, per_line: int = 90) -> tuple[int, int]:
    """Pixel (x, y) of the centre of strip ``row``'s cell for character ``t``."""
    line, col = divmod(t, per_line)
    block = rows * CELL + TEXT_ROW + GAP
    return MARGIN + col * CELL + CELL // 2, line * block + row * CELL + CELL // 2


def _grey(value: float) -> int:
    return round(255 * float(np.clip(value, 0.0, 1.0)))


def svg_strips(text: str, strips: list[Strip], per_line: int = 90) -> str:
    rows = len(strips)
    width, height, _ = geometry(len(text), rows, per_line)
    block = rows * CELL + TEXT_ROW + GAP
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}">',
        f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
        '<g font-family="monospace" font-size="11" text-anchor="middle">',
    ]
    for start in range(0, max(len(text), 1), per_line):
        top = (start // per_line) * block
        for r, strip in enumerate(strips):
            out.append(
                f'<text x="{MARGIN - 4}" y="{top + r * CELL + CELL - 2}" text-anchor="end">'
                f"{html.escape(strip.label)}</text>"
            )
        for t in range(start, min(start + per_line, len(text))):
            x = MARGIN + (t - start) * CELL
            for r, strip in enumerate(strips):
                g = _grey(strip.values[t])
                out.append(
                    f'<rect x="{x}" y="{top + r * CELL}" width="{CELL}" height="{CELL}" '
                    f'fill="rgb({g},{g},{g})"/>'
                )
        n = min(per_line, len(text) - start)  # a grey frame around each strip of the line
        for r in range(rows):
            out.append(
                f'<rect x="{MARGIN}" y="{top + r * CELL}" width="{n * CELL}" height="{CELL}" '
                'fill="none" stroke="#8c8c8c" stroke-width="1"/>'
            )
        for t in range(start, min(start + per_line, len(text))):
            x = MARGIN + (t - start) * CELL
            glyph = html.escape(printable(text[t]))
            out.append(f'<text x="{x + CELL // 2}" y="{top + rows * CELL + 12}">{glyph}</text>')
    out += ["</g>", "</svg>"]
    return "\n".join(out) + "\n"


def png_strips(text: str, strips: list[Strip], per_line: int = 90) -> bytes:
    """The same figure as :func:`svg_strips`, pixel for pixel in its cells (matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = len(strips)
    width, height, _ = geometry(len(text), rows, per_line)
    block = rows * CELL + TEXT_ROW + GAP
    image = np.ones((height, width))
    for t in range(len(text)):
        x, y0 = cell_centre(t, 0, rows, per_line)
        x -= CELL // 2
        y0 -= CELL // 2
        for r, strip in enumerate(strips):
            image[y0 + r * CELL : y0 + (r + 1) * CELL, x : x + CELL] = _grey(strip.values[t]) / 255
    frame = 0x8C / 255  # a grey frame around each strip of each line, as in the SVG
    for start in range(0, len(text), per_line):
        top, n = (start // per_line) * block, min(per_line, len(text) - start)
        left, right = MARGIN, MARGIN + n * CELL - 1
        for r in range(rows):
            y0, y1 = top + r * CELL, top + (r + 1) * CELL - 1
            image[[y0, y1], left : right + 1] = frame
            image[y0 : y1 + 1, [left, right]] = frame
    dpi = 100
    fig = plt.figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(
        image, cmap="gray", vmin=0, vmax=1, interpolation="nearest", extent=(0, width, height, 0)
    )
    for start in range(0, len(text), per_line):
        top = (start // per_line) * block
        for r, strip in enumerate(strips):
            ax.text(
                MARGIN - 4,
                top + r * CELL + CELL / 2,
                strip.label,
                ha="right",
                va="center",
                fontsize=7,
            )
        for t in range(start, min(start + per_line, len(text))):
            x = MARGIN + (t - start) * CELL + CELL / 2
            ax.text(
                x,
                top + rows * CELL + 8,
                printable(text[t]),
                ha="center",
                va="center",
                fontsize=7,
                family="monospace",
            )
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.axis("off")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, facecolor="white")
    plt.close(fig)
    return buffer.getvalue()


def write_strips(
    text: str, strips: list[Strip], stem: str | Path, per_line: int = 90
) -> list[Path]:
    """Write ``<stem>.svg`` and ``<stem>.png``; the paths written."""
    stem = Path(stem)
    svg, png = stem.with_name(stem.name + ".svg"), stem.with_name(stem.name + ".png")
    atomic_write(svg, svg_strips(text, strips, per_line))
    atomic_write(png, png_strips(text, strips, per_line))
    return [svg, png]
