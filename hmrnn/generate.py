"""Draw samples from a trained model.

    python -m hmrnn.generate runs/<run>/checkpoints/best.ckpt prompt="the_" length=300 \
        temperature=0.8 seed=0
    python -m hmrnn.generate runs/<run>/checkpoints/best.ckpt length=700 out=samples/hw

Character models print the prompt and the sampled continuation (the state carried from symbol to
symbol) with the boundaries the model used after each symbol: ``|`` where layer 1 fired, ``||``
where layer 2 fired (``|||`` for a third detector); ``marks=false`` prints the plain text. With an
empty prompt sampling starts from the data's first delimiter (end of line or space).

Handwriting checkpoints (IAM-OnDB) write ``<out>.png`` and ``<out>.svg``: the pen trajectory in
pen units (the normalisation undone), and ``<out>_segments.png`` / ``.svg`` with the strokes
coloured by the layer-2 segments the model used. Seeded: the same seed gives the same drawing.
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
from hmrnn.drawing import segment_colours, write_png, write_svg

DEFAULTS = COMMANDS["hmrnn.generate"].defaults()


def sample_handwriting(module: Any, options: dict[str, str]) -> list[Path]:
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


def shown(symbols: list[str]) -> str:
    """Symbols in order, each as its Python literal, so spaces, newlines and controls show."""
    return ", ".join(repr(ch) for ch in symbols)


@torch.no_grad()
def sample_text(
    model: Any,
    vocab: list[str],
    prompt: str,
    length: int,
    temperature: float,
    seed: int,
    start: int = 0,
) -> tuple[list[int], np.ndarray]:
    """The prompt's ids followed by ``length`` sampled ids, and the boundaries (n, K) used
    after each of them. ``start`` is fed first (and not returned) when the prompt is empty."""
    index = {s: i for i, s in enumerate(vocab)}
    unknown = list(dict.fromkeys(ch for ch in prompt if ch not in index))  # first-seen order
    if unknown:
        raise ConfigError(
            f"prompt holds symbols outside the model's vocabulary: {shown(unknown)}; "
            f"the vocabulary ({len(vocab)} symbols): {shown(vocab)}"
        )
    if temperature <= 0:
        raise ConfigError(f"temperature={temperature} must be positive")
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    ids = [index[ch] for ch in prompt]
    out = model(torch.tensor(ids or [start])[:, None])  # (P, 1)
    state, logits = out.state, out.logits[-1, 0]
    bounds = [out.boundaries[:, 0]] if ids else []
    for _ in range(length):
        probs = torch.softmax(logits.double() / temperature, dim=-1)
        nxt = int(torch.multinomial(probs, 1, generator=generator))
        ids.append(nxt)
        out = model(torch.tensor([[nxt]]), state=state)
        state, logits = out.state, out.logits[-1, 0]
        bounds.append(out.boundaries[:, 0])
    return ids, torch.cat(bounds).float().numpy()


def marked(symbols: list[str], bounds: np.ndarray, detectors: int) -> str:
    """Text with ``|`` x (highest layer that fired) after each symbol."""
    out = []
    for ch, z in zip(symbols, bounds, strict=True):
        fired = [l for l in range(detectors) if z[l] > 0.5]
        out.append(ch + "|" * (max(fired) + 1 if fired else 0))
    return "".join(out)


def generate_text(module: Any, options: dict[str, str]) -> str:
    vocab = list(module.hparams.vocab or [])
    if not vocab:
        raise ConfigError("the checkpoint holds no vocabulary, so its symbols cannot be printed")
    delimiters = list(module.hparams.get("delimiters") or [0])
    ids, bounds = sample_text(
        module.model,
        vocab,
        options["prompt"],
        int(options["length"]),
        float(options["temperature"]),
        int(options["seed"]),
        start=delimiters[0],
    )
    symbols = [vocab[i] for i in ids]
    rnn = module.model.rnn
    detectors = rnn.num_layers - 1 + int(getattr(rnn, "top_layer_boundary", False))
    if options["marks"].lower() in ("false", "0", "no") or not module.is_hierarchical:
        return "".join(symbols)
    return marked(symbols, bounds, detectors)


def main(argv: list[str] | None = None) -> list[Path] | str:
    """Sample from a checkpoint: the text, or the files drawn (none for ``--help``)."""
    argv = sys.argv[1:] if argv is None else argv
    if print_help_if_asked(argv, "hmrnn.generate"):
        return []
    checkpoint, options = parse_arguments(argv, DEFAULTS, "hmrnn.generate")
    module = load_module(checkpoint)
    if "mean" not in module.hparams:
        text = generate_text(module, options)
        print(text)
        return text
    written = sample_handwriting(module, options)
    print("\n".join(str(p) for p in written))
    return written


if __name__ == "__main__":
    try:
        main()
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
