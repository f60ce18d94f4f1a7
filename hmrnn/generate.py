"""Draw samples from a trained model.

    python -m hmrnn.generate runs/<run>/checkpoints/best.ckpt length=700 temperature=1.0 seed=0 \
        out=samples/hw

Handwriting checkpoints (IAM-OnDB) write ``<out>.png`` and ``<out>.svg``: the pen trajectory in
pen units (the normalisation undone), and ``<out>_segments.png`` / ``.svg`` with the strokes
coloured by the layer-2 segments the model used. Seeded: the same seed gives the same drawing.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from hmrnn.config import ConfigError
from hmrnn.drawing import segment_colours, write_png, write_svg

DEFAULTS = {"length": "700", "temperature": "1.0", "seed": "0", "out": "sample", "layer": "2"}


def parse(argv: list[str]) -> tuple[Path, dict[str, str]]:
    if not argv or "=" in argv[0]:
        raise ConfigError("usage: python -m hmrnn.generate <checkpoint> [key=value ...]")
    options = dict(DEFAULTS)
    for arg in argv[1:]:
        key, sep, value = arg.partition("=")
        if not sep or key not in DEFAULTS:
            raise ConfigError(
                f"argument {arg!r}: expected one of {', '.join(DEFAULTS)} as key=value"
            )
        options[key] = value
    path = Path(argv[0])
    if not path.is_file():
        raise ConfigError(f"checkpoint {path} does not exist")
    return path, options


def sample_handwriting(checkpoint: Path, options: dict[str, str]) -> list[Path]:
    from hmrnn.lit.handwriting import LitHandwriting

    module = LitHandwriting.load_from_checkpoint(checkpoint, map_location="cpu").eval()
    generator = torch.Generator().manual_seed(int(options["seed"]))
    points, bounds = module.model.generate(
        int(options["length"]), 1, generator, float(options["temperature"])
    )
    points = points[:, 0].numpy().astype(np.float64)
    mean, std = np.asarray(module.hparams.mean), np.asarray(module.hparams.std)
    points[:, :2] = points[:, :2] * std + mean  # pen units
    out = Path(options["out"])
    out.parent.mkdir(parents=True, exist_ok=True)
    layer = int(options["layer"]) - 1
    segments = segment_colours(bounds[:, 0, layer].numpy()) if layer < bounds.shape[-1] else None
    written = []
    for suffix, segs in (("", None), ("_segments", segments)):
        if suffix and segs is None:
            continue
        for ext, write in ((".png", write_png), (".svg", write_svg)):
            path = out.with_name(out.name + suffix + ext)
            write(points, path, segs)
            written.append(path)
    return written


def main(argv: list[str] | None = None) -> list[Path]:
    checkpoint, options = parse(sys.argv[1:] if argv is None else argv)
    hparams = torch.load(checkpoint, map_location="cpu", weights_only=True).get(
        "hyper_parameters", {}
    )
    if "mean" not in hparams:
        raise ConfigError(
            f"{checkpoint} is not a handwriting checkpoint; text generation arrives "
            "with the visualisation issue"
        )
    written = sample_handwriting(checkpoint, options)
    print("\n".join(str(p) for p in written))
    return written


if __name__ == "__main__":
    try:
        main()
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
