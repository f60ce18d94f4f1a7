"""What the boundary diagnostics cost (docs/hierarchy.md, "The diagnostics"): one logging
step's ``hmrnn.core.diagnostics.boundary_diagnostics`` (on 8 sequences, the default of
``trainer.boundary_diagnostics``) against one training step of the same model (the demo's
3-layer HM-LSTM) at batch 64, T = 100, timed interleaved; prints the median and range of each.

    python benchmarks/diagnostics_cost.py [--hidden 128] [--layer-norm] [--repeats 15]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from hmrnn.compose import compose
from hmrnn.core.diagnostics import boundary_diagnostics
from hmrnn.lit.module import build_model


def main(argv: list[str] | None = None) -> dict[str, list[float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layer-norm", action="store_true")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rows", type=int, default=8, help="sequences the diagnostics read")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    H = args.hidden
    config, _ = compose(
        [
            "experiment=demo",
            f"model.hidden_size={H}",
            f"model.output_size={H}",
            f"model.layer_norm={args.layer_norm}",
        ]
    )
    vocab = 50
    model = build_model(config, vocab)
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    x = torch.randint(0, vocab, (101, args.batch))
    rows = x[:, : args.rows]

    def train_step() -> None:
        optimizer.zero_grad()
        model(x[:-1], x[1:], None).loss.backward()
        optimizer.step()

    def diagnostics() -> None:
        boundary_diagnostics(model.rnn, lambda: model(rows[:-1], rows[1:], None).loss)

    steps: dict[str, Callable[[], None]] = {"training step": train_step, "diagnostics": diagnostics}
    times: dict[str, list[float]] = {name: [] for name in steps}
    for step in steps.values():  # warm-up
        step()
    for _ in range(args.repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    parts = [
        f"{name} {statistics.median(t) * 1e3:.0f} ms ({min(t) * 1e3:.0f}-{max(t) * 1e3:.0f})"
        for name, t in times.items()
    ]
    print(f"H = {H}, layer norm {args.layer_norm}, {args.repeats} repeats: " + ", ".join(parts))
    return times


if __name__ == "__main__":
    main()
