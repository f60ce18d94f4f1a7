"""Draw the hierarchy a trained model uses: the paper's figures (model.md §8) as PNG and SVG.

    python -m hmrnn.visualize runs/<run>/checkpoints/best.ckpt [split=valid] [offset=0] \
        [length=450] [out=runs/<run>/figures]

Text models write ``boundaries.{png,svg}`` (one row per detector, z^2 above z^1, white = 1, the
characters under their cells, 90 a line) and ``norms.{png,svg}`` (||h^3||, z^2, ||h^2||, z^1,
||h^1|| as heat strips, each norm scaled to [0, 1] over the excerpt, black = its minimum) for
``length`` symbols of the split from ``offset``, the state warmed up on the 1,000 symbols before
it. Handwriting models write ``handwriting.png`` (sequence ``offset`` of the split drawn twice:
strokes coloured by the true pen-up segments, and by the layer-2 boundaries) and
``handwriting_{true,layer2}.svg``. Every figure is titled with the run (its folder's name), the
split, the offset and the length, and has a legend: the boundary swatches (white = z = 1), the
range each norm strip was scaled from, what the handwriting colours mean.

:class:`hmrnn.run.figures.BoundaryFigures` logs the same figures to W&B at every validation, on
a fixed excerpt.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hmrnn.checkpoints import load_module, parse_arguments
from hmrnn.cli import COMMANDS, print_help_if_asked
from hmrnn.config import ConfigError
from hmrnn.drawing import segment_colours, write_png_panels, write_svg
from hmrnn.strips import Strip, heat_strip, write_strips

DEFAULTS = COMMANDS["hmrnn.visualize"].defaults()
SPLITS = {"valid": "valid", "val": "valid", "test": "test", "train": "train"}


# --------------------------------------------------------------------------------- text
@torch.no_grad()
def text_excerpt(
    model: Any, tokens: np.ndarray, offset: int, length: int, warmup: int = 1000
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run one row from ``offset - warmup``; for the ``length`` symbols from ``offset``:
    the symbols (n,), boundaries (n, K) and hidden-state norms (n, K)."""
    was_training = model.training
    model.eval()
    start = max(0, offset - warmup)
    stop = min(len(tokens), offset + length)
    if stop <= offset:
        raise ConfigError(f"offset={offset} is past the split's end ({len(tokens):,} symbols)")
    device = next(model.parameters()).device
    ids = torch.as_tensor(np.asarray(tokens[start:stop], dtype=np.int64), device=device)[:, None]
    # imposed boundaries (fixed_boundary) come from the model's counters
    imposed = model(ids).boundaries if getattr(model, "fixed", None) is not None else None
    hidden, _, bounds = model.rnn(model.embedding(ids), None, imposed)  # (T, 1, K, H), (T, 1, K)
    model.train(was_training)
    keep = slice(offset - start, None)
    norms = hidden[keep, 0].norm(dim=-1).float().cpu().numpy()
    return ids[keep, 0].cpu().numpy(), bounds[keep, 0].float().cpu().numpy(), norms


def text_strips(
    z: np.ndarray, norms: np.ndarray, detectors: int
) -> tuple[list[Strip], list[Strip]]:
    """(boundary strips z^D .. z^1, norm strips ||h^K||, z^{K-1}, ||h^{K-1}||, ..., ||h^1||)."""
    K = norms.shape[1]
    boundaries = [Strip(f"z{l + 1}", z[:, l]) for l in reversed(range(detectors))]
    interleaved = []
    for l in reversed(range(K)):
        interleaved.append(heat_strip(f"|h{l + 1}|", norms[:, l]))
        if 0 < l <= detectors:
            interleaved.append(Strip(f"z{l}", z[:, l - 1]))
    return boundaries, interleaved


def detectors_of(model: Any) -> int:
    rnn = model.rnn
    return rnn.num_layers - 1 + int(getattr(rnn, "top_layer_boundary", False))


def figure_title(run: str, what: str, split: str, where: str, step: int | None = None) -> str:
    """The title line: ``run · what · split · where`` (offset and length), then the step."""
    parts = [run, what, f"{split} split", where] + ([] if step is None else [f"step {step}"])
    return " · ".join(p for p in parts if p)


def text_figures(
    module: Any, tokens: np.ndarray, options: dict[str, str], out: Path, run: str = ""
) -> list[Path]:
    """``boundaries`` and ``norms`` (SVG and PNG) of the excerpt ``options`` choose."""
    vocab = module.hparams.vocab
    offset = int(options["offset"])
    ids, z, norms = text_excerpt(
        module.model, tokens, offset, int(options["length"]), int(options["warmup"])
    )
    text = "".join(vocab[i] for i in ids)
    boundaries, interleaved = text_strips(z, norms, detectors_of(module.model))
    split, where = SPLITS[options["split"]], f"offset {offset} · length {len(text)}"
    return write_strips(
        text, boundaries, out / "boundaries", title=figure_title(run, "boundaries", split, where)
    ) + write_strips(
        text, interleaved, out / "norms", title=figure_title(run, "norms", split, where)
    )


# --------------------------------------------------------------------------- handwriting
@torch.no_grad()
def handwriting_boundaries(model: Any, points: np.ndarray) -> np.ndarray:
    """The (n, K) boundaries the model uses over one normalised sequence (n, 3)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    inputs = torch.as_tensor(points, dtype=torch.float32, device=device)[:, None]
    bounds = model(inputs).boundaries[:, 0].float().cpu().numpy()
    model.train(was_training)
    return bounds


def handwriting_figures(
    module: Any, points: np.ndarray, out: Path, layer: int = 2, title: str = ""
) -> list[Path]:
    """Sequence drawn twice: by true pen-up segments and by layer ``layer``'s boundaries."""
    z = handwriting_boundaries(module.model, points)
    pen = np.asarray(module.hparams.std), np.asarray(module.hparams.mean)
    drawn = np.array(points, dtype=np.float64)
    drawn[:, :2] = drawn[:, :2] * pen[0] + pen[1]  # pen units
    true = segment_colours(drawn[:, 2])
    model_segments = segment_colours(z[:, layer - 1]) if layer - 1 < z.shape[1] else true
    pen_ups = int((drawn[:, 2] > 0.5).sum())
    fired = int((z[:, layer - 1] > 0.5).sum()) if layer - 1 < z.shape[1] else 0
    model_name = f"layer-{layer} segments: a new colour after each layer-{layer} boundary"
    panels = [
        (f"true pen-up segments: a new colour after each pen-up ({pen_ups} pen-ups)", true),
        (f"{model_name} ({fired} boundaries)", model_segments),
    ]
    write_png_panels(drawn, out / "handwriting.png", panels, title=title)
    for name, segments, what in (
        ("handwriting_true.svg", true, "true pen-up segments"),
        (f"handwriting_layer{layer}.svg", model_segments, f"layer-{layer} segments"),
    ):
        write_svg(drawn, out / name, segments, title=" · ".join(p for p in (title, what) if p))
    return [
        out / "handwriting.png",
        out / "handwriting_true.svg",
        out / f"handwriting_layer{layer}.svg",
    ]


def handwriting_where(index: int, points: np.ndarray) -> str:
    """The title's place of a handwriting figure: the sequence (``offset``) and its length."""
    return f"sequence offset {index} · {len(points)} points"


# -------------------------------------------------------------------------------- command
def parse(argv: list[str]) -> tuple[Path, dict[str, str]]:
    path, options = parse_arguments(argv, DEFAULTS, "hmrnn.visualize")
    if options["split"] not in SPLITS:
        raise ConfigError(f"split={options['split']!r}: choose valid, test or train")
    for key in ("offset", "length", "warmup"):
        if not options[key].isdigit():
            raise ConfigError(f"{key}={options[key]!r} must be a non-negative integer")
    return path, options


def main(argv: list[str] | None = None) -> list[Path]:
    """Draw the figures of a checkpoint; the files written (none for ``--help``)."""
    argv = sys.argv[1:] if argv is None else argv
    if print_help_if_asked(argv, "hmrnn.visualize"):
        return []
    from datamodules import build_datamodule

    checkpoint, options = parse(argv)
    module = load_module(checkpoint)
    if not module.is_hierarchical:
        raise ConfigError(f"{checkpoint} holds a stacked LSTM: it has no boundaries to draw")
    run_dir = (
        checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
    )
    out = Path(options["out"]) if options["out"] else run_dir / "figures"
    dm = build_datamodule(module.config.data)
    dm.setup()
    split = SPLITS[options["split"]]
    if dm.kind == "text":
        written = text_figures(module, dm.tokens[split], options, out, run_dir.name)
    else:
        index = int(options["offset"])
        if index >= len(dm.sequences[split]):
            raise ConfigError(
                f"offset={index}: the {split} split holds {len(dm.sequences[split])} sequences"
            )
        points = dm.sequences[split][index]
        title = figure_title(run_dir.name, "handwriting", split, handwriting_where(index, points))
        written = handwriting_figures(module, points, out, title=title)
    print("\n".join(str(p) for p in written))
    return written


if __name__ == "__main__":
    try:
        main()
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
