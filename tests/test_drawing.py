"""Handwriting drawings: strokes split at pen-up; SVG and PNG show them (checked by content)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from hmrnn.drawing import (
    PALETTE,
    TITLE_BAND,
    panel_layout,
    segment_colours,
    svg_text,
    to_strokes,
    write_png,
    write_png_panels,
    write_svg,
)

# an "L" (three points, pen up) then a short bar (two points, pen up)
POINTS = np.array([[0, 0, 0], [0, 10, 0], [10, 0, 1], [5, 5, 0], [10, 0, 1]], dtype=np.float32)


def test_strokes_split_at_pen_up_in_absolute_coordinates() -> None:
    strokes = to_strokes(POINTS)
    assert len(strokes) == 2
    assert strokes[0].tolist() == [[0, 0], [0, 10], [10, 10]]
    assert strokes[1].tolist() == [[15, 15], [25, 15]]


def test_svg_has_one_polyline_per_stroke_with_the_points(tmp_path: Path) -> None:
    write_svg(POINTS, tmp_path / "a.svg")
    text = (tmp_path / "a.svg").read_text()
    polylines = re.findall(r'<polyline points="([^"]+)"', text)
    assert polylines == ["0.0,0.0 0.0,10.0 10.0,10.0", "15.0,15.0 25.0,15.0"]
    coloured = svg_text(POINTS, segment_colours(np.array([0, 1, 0, 0, 1])))
    assert len(set(re.findall(r'stroke="(#[0-9a-f]{6})"', coloured))) == 2


def test_segment_colours_start_a_new_segment_after_each_boundary() -> None:
    assert segment_colours(np.array([0, 1, 0, 1, 0])).tolist() == [0, 0, 1, 1, 2]


def test_png_shows_dark_strokes_on_white_and_segment_colours(tmp_path: Path) -> None:
    import matplotlib.image

    write_png(POINTS, tmp_path / "a.png")
    image = matplotlib.image.imread(tmp_path / "a.png")[..., :3]
    dark = (image.sum(-1) < 1.0).mean()
    assert image[0, 0].tolist() == [1.0, 1.0, 1.0]  # white background
    assert 0.001 < dark < 0.2, "strokes are drawn and do not fill the picture"
    write_png(POINTS, tmp_path / "b.png", segments=np.array([0, 0, 0, 1, 1]))
    colours = matplotlib.image.imread(tmp_path / "b.png")[..., :3].reshape(-1, 3)
    blue = (np.abs(colours - [0x1F / 255, 0x77 / 255, 0xB4 / 255]).max(1) < 0.05).sum()
    red = (np.abs(colours - [0xD6 / 255, 0x27 / 255, 0x28 / 255]).max(1) < 0.05).sum()
    assert blue > 20 and red > 20


def test_svg_title_names_the_drawing_escaped() -> None:
    assert "<title>" not in svg_text(POINTS)
    assert "<title>run &lt;1&gt; · true</title>" in svg_text(POINTS, title="run <1> · true")


def test_panels_under_a_title_and_a_legend_of_the_segment_colours_used(tmp_path: Path) -> None:
    import matplotlib.image

    panels = [("one segment", np.zeros(5, dtype=int)), ("two", np.array([0, 0, 0, 1, 1]))]
    write_png_panels(POINTS, tmp_path / "t.png", panels, title="run · valid split")
    write_png_panels(POINTS, tmp_path / "b.png", panels)
    titled = matplotlib.image.imread(tmp_path / "t.png")[..., :3]
    bare = matplotlib.image.imread(tmp_path / "b.png")[..., :3]
    band = round(TITLE_BAND * 100)
    assert (titled[:band].sum(-1) < 1.5).sum() > 100 and (bare[:band].sum(-1) < 1.5).sum() == 0
    assert np.array_equal(titled[band:], bare[band:]), "the title changes nothing else"
    (_, height), rects = panel_layout(POINTS, 2)
    first_panel = round(height * (1 - rects[0][1] - rects[0][3]) * 100)

    def found(region: np.ndarray, colour: str) -> int:
        rgb = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)]) / 255
        return int((np.abs(region - rgb).max(-1) < 0.05).sum())

    legend = titled[band:first_panel]  # the legend shows the two colours used, no other
    assert [c for c in PALETTE if found(legend, c) > 20] == list(PALETTE[:2])
    assert rects[0][1] > rects[1][1] + rects[1][3] - 1e-9, "panels stacked top to bottom"
