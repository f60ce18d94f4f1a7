"""Handwriting drawings: strokes split at pen-up; SVG and PNG show them (checked by content)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from hmrnn.drawing import segment_colours, svg_text, to_strokes, write_png, write_svg

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
