"""Where in a word each boundary detector fires (issue 18, docs/hierarchy.md).

For each run folder (its ``checkpoints/best.ckpt``, else ``last.ckpt``), the model reads a stretch
of the test split with its state carried, and the firing rate of every detector layer is counted
per class of position: a word's first symbol, its middle symbols, its last symbol, and each word
delimiter of the data set (space and '.' on the synthetic corpus, '_' and the end of line on
PTB-char). F1 scores say how well a layer matches a kind of boundary; this table says what else
it fires on: a layer that fires on every last letter and every middle one is not a word
detector, whatever its recall.

    python benchmarks/hierarchy_positions.py runs/sweeps/hierarchy_seeds/demo-hmlstm-* \\
        [--chars 20000] [--offset 2000] [--show 120]

Prints a Markdown table, one line per run and layer (each class's share of the positions in
the header), and with ``--show N`` then each run's first N symbols with each layer's firings
under them.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np

NAMES = {" ": "space", "\n": "newline", "_": "'_'", ".": "'.'"}


def position_classes(symbols: Sequence[str], delimiters: Sequence[str]) -> dict[str, np.ndarray]:
    """Boolean masks over ``symbols``: ``first`` / ``middle`` / ``last`` symbol of a word (a run
    of non-delimiters; a one-symbol word counts as ``last``), then one per delimiter."""
    chars = np.asarray(list(symbols), dtype=object)
    sep = np.isin(chars, list(delimiters))
    next_sep = np.r_[sep[1:], True]
    prev_sep = np.r_[True, sep[:-1]]
    classes = {
        "first": ~sep & prev_sep & ~next_sep,
        "middle": ~sep & ~prev_sep & ~next_sep,
        "last": ~sep & next_sep,
    }
    for d in delimiters:
        classes[NAMES.get(d, repr(d))] = chars == d
    return classes


def firing_by_class(z: np.ndarray, classes: dict[str, np.ndarray]) -> list[dict[str, float]]:
    """Per detector layer (columns of ``z``, (N, D)): class -> the fraction of its positions
    where the layer fired (NaN for a class with no position)."""
    return [
        {
            name: float(z[mask, l].mean()) if mask.any() else float("nan")
            for name, mask in classes.items()
        }
        for l in range(z.shape[1])
    ]


def checkpoint_of(run: Path) -> Path:
    for name in ("best.ckpt", "last.ckpt"):
        if (run / "checkpoints" / name).is_file():
            return run / "checkpoints" / name
    raise SystemExit(f"{run}: no checkpoints/best.ckpt or last.ckpt; pass a finished run folder")


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders")
    parser.add_argument("--chars", type=int, default=20000, help="symbols read (default 20000)")
    parser.add_argument("--offset", type=int, default=2000, help="where in the test split")
    parser.add_argument("--show", type=int, default=0, help="print this many symbols, marked")
    args = parser.parse_args(argv)

    from datamodules import build_datamodule
    from hmrnn.checkpoints import load_module
    from hmrnn.visualize import detectors_of, text_excerpt

    out: list[str] = []
    excerpts: list[str] = []
    header = False
    for run in args.runs:
        module = load_module(checkpoint_of(run))
        dm = build_datamodule(module.config.data)
        dm.setup()
        symbols = dm.vocabulary()
        if symbols is None:
            raise SystemExit(f"{run}: not a character model (no symbols to classify)")
        ids, z, _ = text_excerpt(module.model, dm.tokens["test"], args.offset, args.chars)
        text = [symbols[i] for i in ids]
        delimiters = [symbols[i] for i in dm.delimiter_ids()]
        classes = position_classes(text, delimiters)
        detectors = detectors_of(module.model)
        rates = firing_by_class(z[:, :detectors] > 0.5, classes)
        if not header:
            names = [f"{k} ({v.mean():.2f})" for k, v in classes.items()]
            out += ["| run | layer | rate | " + " | ".join(names) + " |"]
            out += ["|---|---:|---:|" + "---:|" * len(names)]
            header = True
        for l, row in enumerate(rates):
            cells = " | ".join(f"{v:.2f}" for v in row.values())
            out.append(f"| {run.name} | {l + 1} | {(z[:, l] > 0.5).mean():.2f} | {cells} |")
        if args.show:
            shown = "".join(text[: args.show]).replace("\n", "¶")
            marks = [
                "".join("|" if v > 0.5 else " " for v in z[: args.show, l])
                for l in range(detectors)
            ]
            excerpts += ["", f"{run.name} (z1 .. z{detectors} under the text):", "```", shown]
            excerpts += [*marks, "```"]
    report = "\n".join(out + excerpts)
    print(report)
    return report


if __name__ == "__main__":
    main()
