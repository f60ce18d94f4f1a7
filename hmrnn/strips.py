"""The paper's boundary figures (model.md §8) as SVG and PNG: heat strips over text.

    strips = [Strip("z2", z[:, 1]), Strip("z1", z[:, 0])]
    write_strips(text, strips, "boundaries", title="run · valid split")   # .svg and .png

Each figure opens with a title line and a legend line: a white and a black swatch for boundary
strips (white = z = 1), and for heat strips (:func:`heat_strip`) a black-to-white bar with the
range of each strip (black = its minimum, white = its maximum over the excerpt). Under them, each
text line holds ``per_line`` characters (90, as in the paper); above each character one cell per
strip, grey level = value (white = 1, black = 0), the character printed under its cells.
The geometry is fixed (:data:`CELL` pixels a cell, the strips :data:`HEADER` pixels down), so the
pixel of any cell can be computed (:func:`cell_centre`), and of any legend swatch
(:func:`legend`), which the image tests use.
"""

from __future__ import annotations

import html
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hmrnn.io import atomic_write

CELL = 12  # pixels per cell, both ways
TEXT_ROW = 16  # pixels of the character row under the cells
GAP = 10  # pixels between text lines
MARGIN = 56  # left margin, for the strip labels
LEFT = 6  # left edge of the title and the legend
TITLE_ROW = 22  # pixels of the title line at the top
LEGEND_ROW = 24  # pixels of the legend line under it
HEADER = TITLE_ROW + LEGEND_ROW  # the first text line's strips start this far down
TITLE_FONT = 13  # pixels (sans-serif, bold)
FONT = 11  # pixels (monospace): legend text
ADVANCE = 0.62 * FONT  # a monospace glyph's width, a little over DejaVu Sans Mono's 0.602 em
SCALE_BAR = 5 * CELL  # width of the black-to-white bar of the heat strips' legend
FRAME = "#8c8c8c"  # the grey of the frames around strips and swatches


@dataclass
class Strip:
    """One row of cells: ``values`` (N,) in [0, 1] (1 = white), labelled on the left.

    ``scale`` is the (min, max) of the measurements that 0 and 1 stand for when the values were
    scaled from them (a heat strip, see :func:`heat_strip`); None for a boundary strip, whose
    values are z itself (white = a boundary)."""

    label: str
    values: np.ndarray
    scale: tuple[float, float] | None = None


@dataclass
class Key:
    """One legend entry: a swatch ("white", "black" or "scale", a black-to-white bar) whose left
    edge is at pixel ``x`` of the legend line, its text after it."""

    swatch: str
    x: int
    text: str

    @property
    def width(self) -> int:
        return SCALE_BAR if self.swatch == "scale" else CELL

    @property
    def end(self) -> int:
        """The pixel just right of the text."""
        return self.x + self.width + 4 + round(len(self.text) * ADVANCE)


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


def heat_strip(label: str, measurements: np.ndarray) -> Strip:
    """A strip of ``measurements`` scaled to [0, 1] over the excerpt, keeping the range used."""
    v = np.asarray(measurements, dtype=np.float64)
    scale = (float(v.min()), float(v.max())) if len(v) else (0.0, 0.0)
    return Strip(label, normalise(v), scale)


def span(low: float, high: float) -> str:
    """A heat strip's range as the legend gives it (a constant strip is drawn mid-grey)."""
    return f"{low:.3g} (constant)" if low == high else f"{low:.3g}..{high:.3g}"


def legend(strips: list[Strip]) -> list[Key]:
    """The legend line's entries, left to right: boundary swatches when a strip is a boundary
    strip, the scale bar with every heat strip's range when one is a heat strip."""
    entries = []
    if any(s.scale is None for s in strips):
        entries += [("white", "boundary (z = 1)"), ("black", "no boundary")]
    ranges = [f"{s.label} {span(*s.scale)}" for s in strips if s.scale]
    if ranges:
        entries.append(("scale", "min..max of each strip: " + "  ".join(ranges)))
    keys, x = [], LEFT
    for swatch, text in entries:
        keys.append(Key(swatch, x, text))
        x = keys[-1].end + 2 * CELL
    return keys


def geometry(
    n: int, rows: int, per_line: int, keys: list[Key] | None = None
) -> tuple[int, int, int]:
    """(width, height, lines) in pixels for n characters, ``rows`` strips and a legend of
    ``keys`` (the figure widens when the legend is longer than a text line)."""
    lines = max(1, -(-n // per_line))
    block = rows * CELL + TEXT_ROW + GAP
    width = max([MARGIN + per_line * CELL] + [k.end + LEFT for k in keys or []])
    return width, HEADER + lines * block, lines


def cell_centre(t: int, row: int, rows: int, per_line: int = 90) -> tuple[int, int]:
    """Pixel (x, y) of the centre of strip ``row``'s cell for character ``t``."""
    line, col = divmod(t, per_line)
    block = rows * CELL + TEXT_ROW + GAP
    return MARGIN + col * CELL + CELL // 2, HEADER + line * block + row * CELL + CELL // 2


def swatch_top() -> int:
    """The pixel row of the top edge of the legend's swatches."""
    return TITLE_ROW + (LEGEND_ROW - CELL) // 2


def _grey(value: float) -> int:
    return round(255 * float(np.clip(value, 0.0, 1.0)))


def svg_strips(text: str, strips: list[Strip], per_line: int = 90, title: str = "") -> str:
    """The figure as SVG: title, legend, then per line of ``per_line`` symbols the strips (one
    cell a symbol, grey = the value) and the symbols under them."""
    keys = legend(strips)
    width, height, _ = geometry(len(text), len(strips), per_line, keys)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}">',
        f"<title>{html.escape(title)}</title>",
        '<defs><linearGradient id="scale"><stop offset="0" stop-color="#000000"/>'
        '<stop offset="1" stop-color="#ffffff"/></linearGradient></defs>',
        f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
        f'<text class="title" x="{LEFT}" y="{TITLE_ROW - 6}" font-family="sans-serif" '
        f'font-size="{TITLE_FONT}" font-weight="bold">{html.escape(title)}</text>',
        *_svg_legend(keys),
        '<g font-family="monospace" font-size="11" text-anchor="middle">',
    ]
    for start in range(0, max(len(text), 1), per_line):
        out += _svg_line(text, strips, start, per_line)
    out += ["</g>", "</svg>"]
    return "\n".join(out) + "\n"


def _svg_legend(keys: list[Key]) -> list[str]:
    """The legend's swatches and their texts, as an SVG group."""
    out = [f'<g class="legend" font-family="monospace" font-size="{FONT}">']
    top = swatch_top()
    fills = {"white": "#ffffff", "black": "#000000", "scale": "url(#scale)"}
    for key in keys:
        out.append(
            f'<rect x="{key.x}" y="{top}" width="{key.width}" height="{CELL}" '
            f'fill="{fills[key.swatch]}" stroke="{FRAME}" stroke-width="1"/>'
        )
        out.append(
            f'<text x="{key.x + key.width + 4}" y="{top + CELL - 2}">{html.escape(key.text)}</text>'
        )
    return [*out, "</g>"]


def _svg_line(text: str, strips: list[Strip], start: int, per_line: int) -> list[str]:
    """One line of the figure, from symbol ``start``: labels, cells, frames, symbols."""
    rows = len(strips)
    top = HEADER + (start // per_line) * (rows * CELL + TEXT_ROW + GAP)
    out = []
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
            f'fill="none" stroke="{FRAME}" stroke-width="1"/>'
        )
    for t in range(start, min(start + per_line, len(text))):
        x = MARGIN + (t - start) * CELL
        glyph = html.escape(printable(text[t]))
        out.append(f'<text x="{x + CELL // 2}" y="{top + rows * CELL + 12}">{glyph}</text>')
    return out


def _frame(image: np.ndarray, x0: int, y0: int, x1: int, y1: int) -> None:
    """A one-pixel grey frame on the rectangle's edge pixels (inclusive corners)."""
    grey = int(FRAME[1:3], 16) / 255
    image[[y0, y1], x0 : x1 + 1] = grey
    image[y0 : y1 + 1, [x0, x1]] = grey


def _pixels(text: str, strips: list[Strip], keys: list[Key], per_line: int) -> np.ndarray:
    """The figure's cells, frames and swatches as a grey image (1 = white)."""
    rows = len(strips)
    width, height, _ = geometry(len(text), rows, per_line, keys)
    block = rows * CELL + TEXT_ROW + GAP
    image = np.ones((height, width))
    for t in range(len(text)):
        x, y0 = cell_centre(t, 0, rows, per_line)
        x -= CELL // 2
        y0 -= CELL // 2
        for r, strip in enumerate(strips):
            image[y0 + r * CELL : y0 + (r + 1) * CELL, x : x + CELL] = _grey(strip.values[t]) / 255
    for start in range(0, len(text), per_line):  # a grey frame around each strip of each line
        top, n = HEADER + (start // per_line) * block, min(per_line, len(text) - start)
        for r in range(rows):
            _frame(image, MARGIN, top + r * CELL, MARGIN + n * CELL - 1, top + (r + 1) * CELL - 1)
    top = swatch_top()
    for key in keys:
        fill = {"white": 1.0, "black": 0.0, "scale": np.linspace(0.0, 1.0, key.width)}
        image[top : top + CELL, key.x : key.x + key.width] = fill[key.swatch]
        _frame(image, key.x, top, key.x + key.width - 1, top + CELL - 1)
    return image


def png_strips(text: str, strips: list[Strip], per_line: int = 90, title: str = "") -> bytes:
    """The same figure as :func:`svg_strips`, pixel for pixel in its cells and swatches."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = legend(strips)
    width, height, _ = geometry(len(text), len(strips), per_line, keys)
    dpi = 100
    fig = plt.figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(
        _pixels(text, strips, keys, per_line),
        cmap="gray",
        vmin=0,
        vmax=1,
        interpolation="nearest",
        extent=(0, width, height, 0),
    )
    _png_texts(ax, text, strips, keys, per_line, title, points=72 / dpi)
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.axis("off")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, facecolor="white")
    plt.close(fig)
    return buffer.getvalue()


def _png_texts(
    ax: Any,
    text: str,
    strips: list[Strip],
    keys: list[Key],
    per_line: int,
    title: str,
    points: float,
) -> None:
    """The PNG's title, legend texts, strip labels and symbols (``points``: matplotlib's font
    points per pixel, as the sizes here are given in pixels)."""
    rows = len(strips)
    block = rows * CELL + TEXT_ROW + GAP
    ax.text(
        LEFT, TITLE_ROW / 2 + 1, title, va="center", fontsize=TITLE_FONT * points, weight="bold"
    )
    for key in keys:
        ax.text(
            key.x + key.width + 4,
            swatch_top() + CELL / 2,
            key.text,
            va="center",
            fontsize=FONT * points,
            family="monospace",
        )
    for start in range(0, len(text), per_line):
        top = HEADER + (start // per_line) * block
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


def write_strips(
    text: str, strips: list[Strip], stem: str | Path, per_line: int = 90, title: str = ""
) -> list[Path]:
    """Write ``<stem>.svg`` and ``<stem>.png``; the paths written."""
    stem = Path(stem)
    svg, png = stem.with_name(stem.name + ".svg"), stem.with_name(stem.name + ".png")
    atomic_write(svg, svg_strips(text, strips, per_line, title))
    atomic_write(png, png_strips(text, strips, per_line, title))
    return [svg, png]
