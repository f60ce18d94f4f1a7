"""The paper's figures and text generation: images checked by their pixels, not their existence."""

from __future__ import annotations

import dataclasses
import io
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import matplotlib.image
import numpy as np
import pytest
import torch

from hmrnn import generate, visualize
from hmrnn.compose import compose
from hmrnn.config import ConfigError
from hmrnn.drawing import PALETTE, panel_layout
from hmrnn.run import figures
from hmrnn.run.figures import BoundaryFigures
from hmrnn.strips import (
    CELL,
    HEADER,
    TITLE_ROW,
    Strip,
    cell_centre,
    heat_strip,
    legend,
    png_strips,
    svg_strips,
    swatch_top,
)
from tests.test_train import train


def grey_at(png: bytes, x: int, y: int) -> float:
    image = matplotlib.image.imread(io.BytesIO(png), format="png")
    return float(image[y, x, :3].mean())


def pixels(png: bytes) -> np.ndarray:
    """The (H, W) grey levels of a PNG (1 = white)."""
    return matplotlib.image.imread(io.BytesIO(png), format="png")[..., :3].mean(-1)


def drawn(band: np.ndarray) -> int:
    """How many dark pixels (text, strokes) a band of a grey image holds."""
    return int((band < 0.5).sum())


def colours_in(panel: np.ndarray) -> set[str]:
    """The palette colours found on more than 20 pixels of an (h, w, 3) image region."""
    found = set()
    for colour in PALETTE:
        rgb = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)]) / 255
        if (np.abs(panel - rgb).sum(-1) < 0.08).sum() > 20:
            found.add(colour)
    return found


def test_boundary_cells_are_white_where_the_boundaries_are() -> None:
    rng = np.random.default_rng(0)
    n = 200  # three lines of 90
    z1, z2 = (rng.random(n) < 0.3).astype(float), (rng.random(n) < 0.1).astype(float)
    text = "".join(rng.choice(list("abc _"), n))
    strips = [Strip("z2", z2), Strip("z1", z1)]
    png = png_strips(text, strips)
    image = matplotlib.image.imread(io.BytesIO(png), format="png")
    assert image.shape[1] == 56 + 90 * CELL and image.shape[0] > 3 * 2 * CELL
    for t in range(n):
        for row, values in enumerate((z2, z1)):
            x, y = cell_centre(t, row, rows=2)
            assert abs(grey_at(png, x, y) - values[t]) < 0.02, (t, row)
    # the characters sit under their cells: dark pixels in the text row under a letter
    x, y = cell_centre(0, 1, rows=2)
    below = image[y + CELL // 2 + 2 : y + CELL // 2 + 14, x - 4 : x + 4, :3].mean(-1)
    assert below.min() < 0.5
    svg = svg_strips(text, strips)
    fills = re.findall(r'<rect x="\d+" y="\d+" width="12" height="12" fill="rgb\((\d+),', svg)
    assert [int(g) for g in fills[:4]] == [
        255 * int(z2[0]),
        255 * int(z1[0]),
        255 * int(z2[1]),
        255 * int(z1[1]),
    ]
    # background, cells, a frame per strip and line, the legend's white and black swatches
    assert svg.count("<rect") == 1 + 2 * n + 2 * 3 + 2
    frame = grey_at(png, 56, cell_centre(0, 0, rows=2)[1])  # the frame's left edge
    assert abs(frame - 0x8C / 255) < 0.02


def test_norm_strips_interleave_like_the_paper() -> None:
    z = np.zeros((5, 3))
    norms = np.arange(15, dtype=float).reshape(5, 3)
    boundaries, interleaved = visualize.text_strips(z, norms, detectors=2)
    assert [s.label for s in boundaries] == ["z2", "z1"]
    assert [s.label for s in interleaved] == ["|h3|", "z2", "|h2|", "z1", "|h1|"]
    assert interleaved[0].values.tolist() == [0, 0.25, 0.5, 0.75, 1.0]  # scaled per layer
    assert [s.scale for s in interleaved] == [(2.0, 14.0), None, (1.0, 13.0), None, (0.0, 12.0)]


def test_boundary_figure_has_a_title_line_and_a_white_and_black_legend() -> None:
    rng = np.random.default_rng(1)
    z1, z2 = (rng.random(100) < 0.3).astype(float), (rng.random(100) < 0.1).astype(float)
    text, strips = "".join(rng.choice(list("ab _"), 100)), [Strip("z2", z2), Strip("z1", z1)]
    title = "my-run · boundaries · valid split · offset 5 · length 100"
    svg = svg_strips(text, strips, title=title)
    assert (
        '<text class="title" x="6" y="16" font-family="sans-serif" font-size="13" '
        f'font-weight="bold">{title}</text>'
    ) in svg
    assert f"<title>{title}</title>" in svg
    keys = legend(strips)
    assert [(k.swatch, k.text) for k in keys] == [
        ("white", "boundary (z = 1)"),
        ("black", "no boundary"),
    ]
    top = swatch_top()
    for key, fill in zip(keys, ("#ffffff", "#000000"), strict=True):
        assert f'<rect x="{key.x}" y="{top}" width="12" height="12" fill="{fill}" ' in svg
        assert f">{key.text}</text>" in svg
    assert "min..max" not in svg  # no heat strip, no scale
    titled, bare = pixels(png_strips(text, strips, title=title)), pixels(png_strips(text, strips))
    assert drawn(titled[:TITLE_ROW]) > 100 and drawn(bare[:TITLE_ROW]) == 0  # the title is drawn
    assert np.array_equal(titled[TITLE_ROW:], bare[TITLE_ROW:])  # and changes nothing else
    assert bare[HEADER - 1].min() == 1.0, "the header ends above the first strip"
    white, black = keys
    y = top + CELL // 2
    assert titled[y, white.x + CELL // 2] == 1.0 and titled[y, black.x + CELL // 2] == 0.0
    assert abs(titled[y, white.x] - 0x8C / 255) < 0.01  # the white swatch is framed
    assert drawn(titled[top : top + CELL, white.x + CELL + 4 : black.x]) > 30  # its text


def test_norm_figure_legend_gives_each_strips_range_and_the_scale_bar() -> None:
    rng = np.random.default_rng(2)
    norms = rng.random((60, 3)) * [1.0, 3.0, 7.0]
    z = (rng.random((60, 2)) < 0.3).astype(float)
    _, interleaved = visualize.text_strips(z, norms, detectors=2)
    text = "".join(rng.choice(list("ab _"), 60))
    keys = legend(interleaved)
    assert [k.swatch for k in keys] == ["white", "black", "scale"]
    ranges = "  ".join(
        f"|h{l + 1}| {norms[:, l].min():.3g}..{norms[:, l].max():.3g}" for l in (2, 1, 0)
    )
    assert keys[2].text == f"min..max of each strip: {ranges}"
    constant = legend([heat_strip("|h|", np.full(4, 2.0))])
    assert [(k.swatch, k.text) for k in constant] == [
        ("scale", "min..max of each strip: |h| 2 (constant)")
    ]
    svg = svg_strips(text, interleaved, title="t")
    assert f">{keys[2].text}</text>" in svg
    bar_rect = f'<rect x="{keys[2].x}" y="{swatch_top()}" width="60" height="12" fill="url(#scale)"'
    assert bar_rect in svg
    image = pixels(png_strips(text, interleaved, title="t"))
    bar = image[swatch_top() + CELL // 2, keys[2].x + 1 : keys[2].x + 59]  # inside the frame
    assert bar[0] < 0.05 and bar[-1] > 0.95 and np.all(np.diff(bar) >= 0), "black to white"
    for t in (0, 59):  # and the cells still show the scaled norms
        x, y = cell_centre(t, 0, rows=5)
        expected = (norms[t, 2] - norms[:, 2].min()) / np.ptp(norms[:, 2])
        assert abs(image[y, x] - expected) < 0.01


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("vis")
    train(tmp, "run_name=vis", "trainer.max_steps=10", "trainer.val_check_interval=5")
    return tmp / "vis" / "checkpoints" / "best.ckpt"


def test_visualize_command_draws_the_models_boundaries(checkpoint: Path, tmp_path: Path) -> None:
    written = visualize.main([str(checkpoint), "offset=300", "length=120", f"out={tmp_path}"])
    assert sorted(p.name for p in written) == sorted(
        ["boundaries.svg", "boundaries.png", "norms.svg", "norms.png"]
    )
    module = visualize.load_module(checkpoint)
    from datamodules import build_datamodule

    dm = build_datamodule(module.config.data)
    dm.setup()
    _, z, norms = visualize.text_excerpt(module.model, dm.tokens["valid"], 300, 120, 1000)
    png = (tmp_path / "boundaries.png").read_bytes()
    assert 0 < z[:, 0].sum() < 120, "the excerpt holds both kinds of cell"
    where = "valid split · offset 300 · length 120"  # run named after the checkpoint's folder
    assert f">vis · boundaries · {where}</text>" in (tmp_path / "boundaries.svg").read_text()
    norms_svg = (tmp_path / "norms.svg").read_text()
    assert f">vis · norms · {where}</text>" in norms_svg
    assert f"|h1| {norms[:, 0].min():.3g}..{norms[:, 0].max():.3g}" in norms_svg
    assert drawn(pixels(png)[:TITLE_ROW]) > 100
    for t in range(120):
        for row, layer in enumerate((1, 0)):  # z2 above z1
            x, y = cell_centre(t, row, rows=2)
            assert abs(grey_at(png, x, y) - z[t, layer]) < 0.02
    bad = subprocess.run(
        [sys.executable, "-m", "hmrnn.visualize", str(checkpoint), "offset=x"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "offset='x' must be a non-negative integer" in bad.stderr


def test_generated_text_is_seeded_and_marks_the_boundaries_used(checkpoint: Path) -> None:
    args = [str(checkpoint), "prompt=the ", "length=60", "temperature=0.9", "seed=3"]
    first, again = generate.main(args), generate.main(args)
    assert first == again, "the same seed gives the same text"
    assert generate.main([*args[:-1], "seed=4"]) != first
    plain = generate.main([*args, "marks=false"])
    assert re.sub(r"\|+", "", first) == plain and plain.startswith("the ")
    module = visualize.load_module(checkpoint)
    ids, bounds = generate.sample_text(module.model, module.hparams.vocab, "the ", 60, 0.9, 3)
    symbols = [module.hparams.vocab[i] for i in ids]
    assert generate.marked(symbols, bounds, 2) == first
    expected = "".join(
        ch + ("||" if z[1] > 0.5 else "|" if z[0] > 0.5 else "")
        for ch, z in zip(symbols, bounds, strict=True)
    )
    assert first == expected
    vocab = module.hparams.vocab
    with pytest.raises(ConfigError) as error:
        generate.main([str(checkpoint), "prompt=tHE\tH"])
    listed = ", ".join(repr(s) for s in vocab)
    assert str(error.value) == (
        "prompt holds symbols outside the model's vocabulary: 'H', 'E', '\\t'; "
        f"the vocabulary ({len(vocab)} symbols): {listed}"
    )


def test_unknown_prompt_symbols_are_named_and_the_vocabulary_listed_visibly() -> None:
    vocab = ["\n", " ", "a", "b"]
    with pytest.raises(ConfigError) as error:
        generate.sample_text(None, vocab, "ab\tc a\tX", 5, 1.0, 0)
    message = str(error.value)
    assert "outside the model's vocabulary: '\\t', 'c', 'X';" in message  # first-seen order
    assert message.endswith("the vocabulary (4 symbols): '\\n', ' ', 'a', 'b'")


def test_handwriting_drawn_by_true_and_model_segments(tmp_path: Path) -> None:
    from hmrnn.lit.handwriting import LitHandwriting

    config, _ = compose(
        ["experiment=iam_ondb_small", "model.hidden_size=16", "model.output_size=16"]
    )
    module = LitHandwriting(dataclasses.asdict(config), [0.0, 0.0], [1.0, 1.0])
    rng = np.random.default_rng(0)
    points = np.zeros((120, 3), dtype=np.float32)
    points[:, 0] = 1.0
    points[:, 1] = np.sin(np.arange(120) / 5)
    points[::20, 2] = 1.0  # pen lifted every 20 points: 6 strokes
    points[:, :2] += rng.normal(0, 0.05, (120, 2))
    title = "hw-run · handwriting · valid split · sequence 0 · 120 points"
    written = visualize.handwriting_figures(module, points, tmp_path, title=title)
    image = matplotlib.image.imread(tmp_path / "handwriting.png")[..., :3]
    (width, height), rects = panel_layout(points, 2)
    assert image.shape[:2] == (round(height * 100), round(width * 100))

    def rows(top: float, bottom: float) -> np.ndarray:  # inches from the figure's top
        return image[round(top * 100) : round(bottom * 100)]

    top, bottom = (rows(height * (1 - b - h), height * (1 - b)) for _, b, _, h in rects)
    # the first point has the pen up: strokes 1..6 take palette colours 1..6 in the top panel
    assert colours_in(top) == set(PALETTE[1:7])
    assert len(colours_in(bottom)) >= 2  # the model's own segments
    title_band, legend_band = rows(0, 0.45), rows(0.45, 1.05)
    assert drawn(title_band.mean(-1)) > 100 and not colours_in(title_band)
    # the legend shows the colours of segments 1.. in order: at least the 7 of the top panel
    assert colours_in(legend_band) >= set(PALETTE[:7])
    assert drawn(legend_band.mean(-1)) > 100  # its words and numbers
    svg = (tmp_path / "handwriting_true.svg").read_text()
    assert svg.count("<polyline") >= 6 and f"<title>{title} · true pen-up segments</title>" in svg
    assert {p.name for p in written} == {
        "handwriting.png",
        "handwriting_true.svg",
        "handwriting_layer2.svg",
    }


def test_boundary_figure_is_logged_to_wandb_at_validation(
    checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from datamodules import build_datamodule

    module = visualize.load_module(checkpoint)
    dm = build_datamodule(module.config.data)
    dm.setup()
    logged = []

    class Logger:
        def log_image(self, key, images, step):
            logged.append((key, images, step))

    trainer = SimpleNamespace(
        sanity_checking=False, is_global_zero=True, loggers=[Logger()], datamodule=dm, global_step=7
    )
    state = {k: v.clone() for k, v in module.state_dict().items()}
    titles, pngs = [], []

    def png_strips_seen(text: str, strips: list[Strip], title: str = "") -> bytes:
        titles.append(title)
        pngs.append(png_strips(text, strips, title=title))
        return pngs[-1]

    monkeypatch.setattr(figures, "png_strips", png_strips_seen)
    BoundaryFigures(length=90).on_validation_end(trainer, module)
    ((key, (image,), step),) = logged
    assert key == "val/boundaries" and step == 7 and image.ndim == 3 and image.shape[1] > 90 * CELL
    assert titles == ["vis · norms and boundaries · valid split · offset 0 · length 90 · step 7"]
    import wandb

    shown = np.asarray(wandb.Image(image).image.convert("RGB")).mean(-1) / 255  # what W&B shows
    assert shown[0, 0] == 1.0 and shown.min() == 0.0, "white background, black cells"
    assert np.abs(shown - pixels(pngs[0])).max() < 0.01, "W&B shows the figure as drawn"
    assert drawn(shown[:TITLE_ROW]) > 100, "the title is drawn"
    assert all(torch.equal(v, module.state_dict()[k]) for k, v in state.items())
