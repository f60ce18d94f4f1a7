"""Throughput and memory of the HM-LSTM against torch.nn.LSTM of the same depth and width.

    python benchmarks/throughput.py                                  # training, H = 256/512/1024
    python benchmarks/throughput.py --mode train eval --rates 1.0 0.2 0.05 --reference
    python benchmarks/throughput.py --device cuda --markdown docs/performance.md

Every model runs in one process, interleaved (so drifts in machine load hit all of them), after
a warm-up; each time is the fastest of ``--repeats`` steps over two rounds. A training
step is forward + backward through the recurrent stack with a sum loss; an evaluation step is a
forward pass under ``torch.no_grad``. ``--rates`` imposes the boundaries: each layer l < K fires
on a fraction ``rates[l+1]`` of the steps (nested, so a layer fires only where the one below
does), which makes layer l+1 active on about that fraction; without it the detectors decide.
Memory is the bytes of the tensors autograd saves for the backward pass (activation memory);
on CUDA also the peak allocated memory of the step.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

import torch
from torch import nn

from hmrnn.core import HMLSTM, reference_forward
from hmrnn.core.analysis import operation_counts


def imposed_boundaries(rates: list[float], T: int, B: int, K: int, seed: int = 0) -> torch.Tensor:
    """(T, B, K) boundaries: layer l fires with probability rates[l+1], only where l-1 fires."""
    g = torch.Generator().manual_seed(seed)
    z = torch.zeros(T, B, K)
    alive = torch.ones(T, B)
    for l in range(K - 1):
        previous = rates[l] if l else 1.0
        keep = rates[l + 1] / previous if previous else 0.0
        alive = alive * (torch.rand(T, B, generator=g) < keep).float()
        z[:, :, l] = alive
    return z


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(step: Callable[[], None], repeats: int, warmup: int, device: torch.device) -> float:
    """Fastest of ``repeats`` runs of ``step()`` after ``warmup`` runs (seconds).

    The minimum, not the median: on a shared machine the noise only ever adds time.
    """
    for _ in range(warmup):
        step()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return min(times)


def saved_bytes(run: Callable[[], torch.Tensor]) -> int:
    """Bytes of the distinct storages autograd saves during ``run()`` (activation memory)."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = run()
    del out
    return sum(seen.values())


def make_runner(name: str, model: nn.Module, x: torch.Tensor, bounds: torch.Tensor | None):
    if name == "reference":
        return lambda: reference_forward(model, x, None, bounds)[0]  # type: ignore[arg-type]
    if name == "hmlstm":
        return lambda: model(x, None, bounds)[0]
    return lambda: model(x)[0]


def measure(args: argparse.Namespace, H: int, B: int, device: torch.device) -> list[dict]:
    torch.manual_seed(0)
    T, K = args.length, args.layers
    x = torch.randn(T, B, args.input_size, device=device)
    bounds = None
    if args.rates:
        bounds = imposed_boundaries(args.rates, T, B, K).to(device)
    models: dict[str, nn.Module] = {
        "nn.LSTM": nn.LSTM(args.input_size, H, K).to(device),
        "hmlstm": HMLSTM(args.input_size, H, K).to(device),
    }
    if args.reference:
        models["reference"] = models["hmlstm"]
    runners = {n: make_runner(n, m, x, bounds) for n, m in models.items()}
    rows = []
    for mode in args.mode:
        steps = {}
        for name, run in runners.items():
            model = models[name]

            def step(run=run, model=model, mode=mode) -> None:
                if mode == "eval":
                    with torch.no_grad():
                        run()
                    return
                model.zero_grad(set_to_none=True)
                run().float().sum().backward()

            steps[name] = step
        best = {n: float("inf") for n in steps}
        for _ in range(2):  # interleaved rounds
            for name, step in steps.items():
                best[name] = min(best[name], timed(step, args.repeats, args.warmup, device))
        for name in steps:
            row = {
                "mode": mode,
                "H": H,
                "B": B,
                "model": name,
                "seconds": best[name],
                "chars_per_sec": T * B / best[name],
                "ratio": best[name] / best["nn.LSTM"],
            }
            if mode == "train":
                row["saved_mb"] = saved_bytes(runners[name]) / 2**20
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                    steps[name]()
                    row["peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
            rows.append(row)
    if bounds is not None:
        ops = operation_counts(bounds) / (T * B)
        active = (ops[:, 0] + ops[:, 2]).tolist()
        print(f"imposed boundaries: layer activity {', '.join(f'{a:.0%}' for a in active)}")
    return rows


def table(rows: list[dict]) -> str:
    has_peak = any("peak_mb" in r for r in rows)
    head = "| mode | H | B | model | chars/s | time / nn.LSTM | saved MB |"
    sep = "|---|---:|---:|---|---:|---:|---:|"
    if has_peak:
        head, sep = head + " peak MB |", sep + "---:|"
    lines = [head, sep]
    for r in rows:
        saved = f"{r['saved_mb']:.0f}" if "saved_mb" in r else ""
        line = (
            f"| {r['mode']} | {r['H']} | {r['B']} | {r['model']} | {r['chars_per_sec']:,.0f} "
            f"| {r['ratio']:.2f}x | {saved} |"
        )
        if has_peak:
            line += f" {r.get('peak_mb', 0):.0f} |"
        lines.append(line)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, nargs="+", default=[256, 512, 1024])
    parser.add_argument("--batch", type=int, nargs="+", default=[64])
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--length", type=int, default=100)
    parser.add_argument("--input-size", type=int, default=128)
    parser.add_argument("--mode", nargs="+", choices=["train", "eval"], default=["train"])
    parser.add_argument(
        "--rates",
        type=float,
        nargs="+",
        default=None,
        help="per-layer activity to impose, e.g. 1.0 0.2 0.05",
    )
    parser.add_argument("--reference", action="store_true", help="also time the reference")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--markdown", default=None, help="append the table to this file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.rates and len(args.rates) != args.layers:
        parser.error(f"--rates needs {args.layers} values (one per layer), got {args.rates}")
    device = torch.device(args.device)
    header = (
        f"torch {torch.__version__}, device {device}"
        f"{' (' + torch.cuda.get_device_name() + ')' if device.type == 'cuda' else ''}, "
        f"{torch.get_num_threads()} threads, K={args.layers}, T={args.length}, "
        f"H_in={args.input_size}, boundaries: "
        f"{'imposed ' + '/'.join(f'{r:.0%}' for r in args.rates) if args.rates else 'learned'}"
    )
    print(header + "\n", flush=True)
    rows = []
    for H in args.hidden:
        for B in args.batch:
            rows += measure(args, H, B, device)
            print(table(rows[-len(args.mode) * (3 if args.reference else 2) :]), flush=True)
    text = f"{header}\n\n{table(rows)}\n"
    print("\n" + text)
    if args.markdown:
        with open(args.markdown, "a") as f:
            command = " ".join(["python benchmarks/throughput.py", *sys.argv[1:]])
            f.write(f"\n```\n{command}\n```\n\n{text}")


if __name__ == "__main__":
    main()
