"""One step of the HM-LSTM under torch.profiler, after timing it against nn.LSTM.

    python benchmarks/profile_step.py --hidden 256 --batch 64 --mode eval --rates 1.0 0.2 0.05
    python benchmarks/profile_step.py --hidden 512 --batch 64 --mode train --layer-norm

Prints the median of 5 interleaved steps of each (milliseconds), then the profiler's table of
one step of the HM-LSTM by self time (docs/performance.md, "Where the time goes").
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from throughput import imposed_boundaries
from torch import nn
from torch.profiler import profile

from hmrnn.core import HMLSTM


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--mode", choices=["train", "eval"], default="train")
    parser.add_argument("--layer-norm", action="store_true")
    parser.add_argument("--rates", type=float, nargs="+", default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rows", type=int, default=20, help="rows of the profiler's table")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    T, K, H, B = 100, 3, args.hidden, args.batch
    x = torch.randn(T, B, 128)
    bounds = imposed_boundaries(args.rates, T, B, K) if args.rates else None
    model, lstm = HMLSTM(128, H, K, layer_norm=args.layer_norm), nn.LSTM(128, H, K)

    def step(module: nn.Module, run) -> None:
        if args.mode == "eval":
            with torch.no_grad():
                run()
            return
        module.zero_grad(set_to_none=True)
        run()[0].sum().backward()

    ours = lambda: step(model, lambda: model(x, None, bounds))  # noqa: E731
    theirs = lambda: step(lstm, lambda: lstm(x))  # noqa: E731
    times: dict[str, list[float]] = {"hmlstm": [], "nn.LSTM": []}
    for _ in range(2):
        ours(), theirs()
    for _ in range(5):
        for name, call in (("hmlstm", ours), ("nn.LSTM", theirs)):
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    for name, values in times.items():
        print(f"{name}: {statistics.median(values) * 1e3:.1f} ms")
    with profile() as prof:
        ours()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
