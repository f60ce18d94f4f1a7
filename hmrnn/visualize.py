"""Draw the hierarchy a trained model uses: the paper's figures (SPEC section 8) as PNG and SVG.

    python -m hmrnn.visualize runs/<run>/checkpoints/best.ckpt [split=valid] [offset=0] \
        [length=450] [out=runs/<run>/figures]

Text models write ``boundaries.{png,svg}`` (one row per detector, z^2 above z^1, white = 1, the
characters under their cells, 90 a line) and ``norms.{png,svg}`` (||h^3||, z^2, ||h^2||, z^1,
||h^1|| as heat strips, each norm scaled to [0, 1] over the excerpt) for ``length`` symbols of
the split from ``offset``, the state warmed up on the 1,000 symbols before it. Handwriting models
write ``handwriting.png`` (sequence ``offset`` of the split drawn twice: strokes coloured by the
true pen-up segments, and by the layer-2 boundaries) and ``handwriting_{true,layer2}.svg``.

:class:`BoundaryFigures` logs the same figures to W&B at every validation, on a fixed excerpt.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch

from hmrnn.checkpoints import load_module, parse_arguments
from hmrnn.config import ConfigError
from hmrnn.drawing import segment_colours, write_png_panels, write_svg
from hmrnn.strips import Strip, normalise, png_strips, write_strips

DEFAULTS = {"split": "valid", "offset": "0", "length": "450", "out": "", "warmup": "1000"}
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
        interleaved.append(Strip(f"|h{l + 1}|", normalise(norms[:, l])))
        if 0 < l <= detectors:
            interleaved.append(Strip(f"z{l}", z[:, l - 1]))
    return boundaries, interleaved


def detectors_of(model: Any) -> int:
    rnn = model.rnn
    return rnn.num_layers - 1 + int(getattr(rnn, "top_layer_boundary", False))


def text_figures(module: Any, tokens: np.ndarray, options: dict[str, str], out: Path) -> list[Path]:
    vocab = module.hparams.vocab
    ids, z, norms = text_excerpt(
        module.model, tokens, int(options["offset"]), int(options["length"]), int(options["warmup"])
    )
    text = "".join(vocab[i] for i in ids)
    boundaries, interleaved = text_strips(z, norms, detectors_of(module.model))
    return write_strips(text, boundaries, out / "boundaries") + write_strips(
        text, interleaved, out / "norms"
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


def handwriting_figures(module: Any, points: np.ndarray, out: Path, layer: int = 2) -> list[Path]:
    """Sequence drawn twice: by true pen-up segments and by layer ``layer``'s boundaries."""
    z = handwriting_boundaries(module.model, points)
    pen = np.asarray(module.hparams.std), np.asarray(module.hparams.mean)
    drawn = np.array(points, dtype=np.float64)
    drawn[:, :2] = drawn[:, :2] * pen[0] + pen[1]  # pen units
    true = segment_colours(drawn[:, 2])
    model_segments = segment_colours(z[:, layer - 1]) if layer - 1 < z.shape[1] else true
    panels = [("true pen-up segments", true), (f"layer-{layer} boundaries", model_segments)]
    write_png_panels(drawn, out / "handwriting.png", panels)
    write_svg(drawn, out / "handwriting_true.svg", true)
    write_svg(drawn, out / f"handwriting_layer{layer}.svg", model_segments)
    return [
        out / "handwriting.png",
        out / "handwriting_true.svg",
        out / f"handwriting_layer{layer}.svg",
    ]


# ------------------------------------------------------------------------------ W&B hook
class BoundaryFigures(L.Callback):
    """Log the boundary figure of a fixed validation excerpt to W&B after every validation
    (the first ``length`` symbols of the validation stream, or its first sequence), so that
    validations can be compared. Does nothing without a W&B logger or for the LSTM."""

    def __init__(self, length: int = 270) -> None:
        self.length = length

    def on_validation_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or not pl_module.is_hierarchical:
            return
        loggers = [lg for lg in trainer.loggers if hasattr(lg, "log_image")]
        if not loggers:
            return
        image = self.figure(trainer.datamodule, pl_module)
        for logger in loggers:
            logger.log_image(key="val/boundaries", images=[image], step=trainer.global_step)

    def figure(self, dm: Any, module: Any) -> np.ndarray:
        """The figure as an (H, W, C) array."""
        import matplotlib.image

        if hasattr(dm, "tokens"):  # text
            ids, z, norms = text_excerpt(module.model, dm.tokens["valid"], 0, self.length, 0)
            text = "".join(module.hparams.vocab[i] for i in ids)
            _, interleaved = text_strips(z, norms, detectors_of(module.model))
            png = png_strips(text, interleaved)
        else:  # handwriting: the first validation sequence
            import tempfile

            with tempfile.TemporaryDirectory() as tmp:
                handwriting_figures(module, dm.sequences["valid"][0], Path(tmp))
                png = (Path(tmp) / "handwriting.png").read_bytes()
        return matplotlib.image.imread(io.BytesIO(png), format="png")


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
    from datamodules import build_datamodule

    checkpoint, options = parse(sys.argv[1:] if argv is None else argv)
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
    if hasattr(dm, "tokens"):
        written = text_figures(module, dm.tokens[split], options, out)
    else:
        index = int(options["offset"])
        if index >= len(dm.sequences[split]):
            raise ConfigError(
                f"offset={index}: the {split} split holds {len(dm.sequences[split])} sequences"
            )
        written = handwriting_figures(module, dm.sequences[split][index], out)
    print("\n".join(str(p) for p in written))
    return written


if __name__ == "__main__":
    try:
        main()
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
