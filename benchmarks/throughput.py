"""Training-step throughput of the HM-LSTM against torch.nn.LSTM of the same depth and width.

    python benchmarks/throughput.py [--hidden 256 512 1024] [--batch 64] [--length 100]

Both models run in one process, interleaved, after a warm-up; each number is the median of
``--repeats`` timed training steps (forward + backward through the recurrent stack and a sum
loss). Prints a Markdown table of characters per second and the time ratio HM-LSTM / nn.LSTM.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from hmrnn.core import HMLSTM


def time_step(step: Callable[[], None], repeats: int, warmup: int) -> float:
    """Median seconds of ``step()`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def training_step(model: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    """One forward + backward of ``model`` on ``x`` with a sum loss over every output."""

    def step() -> None:
        model.zero_grad(set_to_none=True)
        out = model(x)[0]
        out.float().sum().backward()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, nargs="+", default=[256, 512, 1024])
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--length", type=int, default=100)
    parser.add_argument("--input-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"K={args.layers}, B={args.batch}, T={args.length}, H_in={args.input_size}\n"
    )
    print("| H | nn.LSTM chars/s | HM-LSTM chars/s | HM-LSTM / nn.LSTM time |")
    print("|---:|---:|---:|---:|")
    chars = args.batch * args.length
    for H in args.hidden:
        x = torch.randn(args.length, args.batch, args.input_size)
        lstm = nn.LSTM(args.input_size, H, args.layers)
        hm = HMLSTM(args.input_size, H, args.layers)
        t_lstm, t_hm = [], []
        for _ in range(2):  # interleave so that drifts in machine load hit both
            t_lstm.append(time_step(training_step(lstm, x), args.repeats, args.warmup))
            t_hm.append(time_step(training_step(hm, x), args.repeats, args.warmup))
        a, b = min(t_lstm), min(t_hm)
        print(f"| {H} | {chars / a:,.0f} | {chars / b:,.0f} | {b / a:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
