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
from hmrnn.strips import CELL, Strip, cell_centre, png_strips, svg_strips
from tests.test_train import train


def grey_at(png: bytes, x: int, y: int) -> float:
    image = matplotlib.image.imread(io.BytesIO(png), format="png")
    return float(image[y, x, :3].mean())


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
    assert svg.count("<rect") == 1 + 2 * n + 2 * 3  # background, cells, a frame per strip
    frame = grey_at(png, 56, cell_centre(0, 0, rows=2)[1])  # the frame's left edge
    assert abs(frame - 0x8C / 255) < 0.02


def test_norm_strips_interleave_like_the_paper() -> None:
    z = np.zeros((5, 3))
    norms = np.arange(15, dtype=float).reshape(5, 3)
    boundaries, interleaved = visualize.text_strips(z, norms, detectors=2)
    assert [s.label for s in boundaries] == ["z2", "z1"]
    assert [s.label for s in interleaved] == ["|h3|", "z2", "|h2|", "z1", "|h1|"]
    assert interleaved[0].values.tolist() == [0, 0.25, 0.5, 0.75, 1.0]  # scaled per layer


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
    _, z, _ = visualize.text_excerpt(module.model, dm.tokens["valid"], 300, 120, 1000)
    png = (tmp_path / "boundaries.png").read_bytes()
    assert 0 < z[:, 0].sum() < 120, "the excerpt holds both kinds of cell"
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
    with pytest.raises(Exception, match="outside the model's vocabulary"):
        generate.main([str(checkpoint), "prompt=THE"])


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
    written = visualize.handwriting_figures(module, points, tmp_path)
    image = matplotlib.image.imread(tmp_path / "handwriting.png")
    assert image.shape[0] > 100
    top, bottom = image[: image.shape[0] // 2, :, :3], image[image.shape[0] // 2 :, :, :3]
    from hmrnn.drawing import PALETTE

    def colours_in(panel: np.ndarray) -> set[str]:
        found = set()
        for colour in PALETTE:
            rgb = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)]) / 255
            if (np.abs(panel - rgb).sum(-1) < 0.08).sum() > 20:
                found.add(colour)
        return found

    # the first point has the pen up: strokes 1..6 take palette colours 1..6 in the top panel
    assert colours_in(top) == set(PALETTE[1:7])
    assert len(colours_in(bottom)) >= 2  # the model's own segments
    svg = (tmp_path / "handwriting_true.svg").read_text()
    assert svg.count("<polyline") >= 6
    assert {p.name for p in written} == {
        "handwriting.png",
        "handwriting_true.svg",
        "handwriting_layer2.svg",
    }


def test_boundary_figure_is_logged_to_wandb_at_validation(checkpoint: Path) -> None:
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
    visualize.BoundaryFigures(length=90).on_validation_end(trainer, module)
    ((key, (image,), step),) = logged
    assert key == "val/boundaries" and step == 7 and image.ndim == 3 and image.shape[1] > 90 * CELL
    assert all(torch.equal(v, module.state_dict()[k]) for k, v in state.items())
