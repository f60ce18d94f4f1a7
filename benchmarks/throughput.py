"""Throughput and memory of the HM-LSTM against torch.nn.LSTM of the same depth and width.

    python benchmarks/throughput.py                                  # training, H = 256/512/1024
    python benchmarks/throughput.py --mode train eval --rates 1.0 0.2 0.05 --reference
    python benchmarks/throughput.py --device cuda --markdown docs/performance.md

Every model runs in one process, interleaved: after a warm-up, each of ``--repeats`` rounds
times one step of every model in turn, so that drifts in the machine's load hit all of them
alike. A model's ratio is the median over the rounds of its time divided by nn.LSTM's time in
the same round, and the spread is the lowest and highest of those per-round ratios; chars/s comes
from its median time. A training step is forward + backward through the recurrent stack with a
sum loss; an evaluation step is a forward pass under ``torch.no_grad``. ``--rates`` imposes
the boundaries: each layer l < K fires on a fraction ``rates[l+1]`` of the steps (nested, so
a layer fires only where the one below does), which makes layer l+1 active on about that
fraction; without it the detectors decide.
``--autograd`` adds the HM-LSTM built from autograd operations (``HMLSTM.fused = False``) to
show what the hand-written loop gains; ``--cuda-graphs`` the loop captured into CUDA graphs
(``cuda_graphs = True``: training on CUDA; elsewhere it runs eagerly); ``--bf16`` every model
(nn.LSTM too) under bf16 autocast; ``--torch-ops`` the loop without its C++ cell
(``HMLSTM.native = False``, what runs where there is no compiler); ``--layer-norm`` the HM-LSTM
with layer norm (``layer_norm``) and the paper's LN-LSTM baseline (``ln_lstm``, StackedLSTM
with layer norm), each also in the variants those two flags ask for.

Memory (training): the peak memory of one training step above what the process held before it.
On CPU it is measured in a fresh subprocess per model (Linux) as the resident set's high-water
mark during the first step (VmHWM, reset before it) less the resident set before it, so it
includes everything the step allocates (activations, gradients, workspaces); on CUDA,
``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
from torch import nn

from hmrnn.core import HMLSTM, StackedLSTM, reference_forward
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


def timed(step: Callable[[], None], device: torch.device) -> float:
    """Seconds one run of ``step()`` takes."""
    synchronize(device)
    start = time.perf_counter()
    step()
    synchronize(device)
    return time.perf_counter() - start


def peak_cpu_mb(args: argparse.Namespace, name: str, H: int, B: int) -> float:
    """Peak resident memory (MB) that one training step of ``name`` adds, in a fresh process."""
    spec = {"name": name, "H": H, "B": B, **{k: getattr(args, k) for k in MEMORY_ARGS}}
    out = subprocess.run(
        [sys.executable, __file__, "--_memory-child", json.dumps(spec)],
        check=True,
        capture_output=True,
        text=True,
    )
    return float(out.stdout.strip().splitlines()[-1])


MEMORY_ARGS = ("length", "layers", "input_size", "rates", "threads")


def memory_child(spec: dict) -> None:
    """Run in the subprocess: build one model, take one training step, print the MB it added."""
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    models, x, bounds = build(spec["name"], spec["H"], spec["B"], spec, torch.device("cpu"))
    run = make_runner(spec["name"], models[spec["name"]], x, bounds)
    # Linux keeps the parent's high-water mark across exec: reset it (clear_refs 5), then
    # compare the new high-water mark (VmHWM) with the resident set before the step
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = proc_status_kb("VmRSS")
    run().sum().backward()
    print((proc_status_kb("VmHWM") - before) / 1024)


def proc_status_kb(field: str) -> int:
    """A field of /proc/self/status in kB (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def build(names, H: int, B: int, spec: dict, device: torch.device):
    """The models named (a name or a list), the input and the imposed boundaries (or None)."""
    names = [names] if isinstance(names, str) else names
    T, K, H_in = spec["length"], spec["layers"], spec["input_size"]
    x = torch.randn(T, B, H_in, device=device)
    bounds = None
    if spec["rates"]:
        bounds = imposed_boundaries(spec["rates"], T, B, K).to(device)
    models: dict[str, nn.Module] = {}
    for name in names:
        base, _, variant = ("hmlstm:autograd" if name == "autograd" else name).partition(":")
        if base == "nn.LSTM":
            models[name] = nn.LSTM(H_in, H, K)
        elif base == "ln_lstm":
            models[name] = StackedLSTM(H_in, H, K, layer_norm=True)
        else:
            models[name] = HMLSTM(H_in, H, K, layer_norm=base == "layer_norm")
        models[name].fused = variant != "autograd"
        models[name].native = variant != "torch_ops"
        models[name].cuda_graphs = variant == "graphs"
        models[name].to(device)
    return models, x, bounds


def make_runner(name: str, model: nn.Module, x: torch.Tensor, bounds: torch.Tensor | None):
    if name.endswith(":bf16"):  # under bf16 autocast (the loop: multiplies in bf16)
        run = make_runner(name.removesuffix(":bf16"), model, x, bounds)

        def cast() -> torch.Tensor:
            with torch.autocast(x.device.type, torch.bfloat16):
                return run()

        return cast
    if name == "reference":
        return lambda: reference_forward(model, x, None, bounds)[0]  # type: ignore[arg-type]
    if name == "nn.LSTM" or name.startswith("ln_lstm"):
        return lambda: model(x)[0]
    return lambda: model(x, None, bounds)[0]


def model_names(args: argparse.Namespace) -> list[str]:
    """The models to time: a base name, and ``base:torch_ops`` / ``base:autograd`` /
    ``base:graphs`` / ``base:bf16`` variants (``autograd`` alone for the HM-LSTM's, as in
    earlier tables; ``nn.LSTM:bf16`` with ``--bf16``)."""
    flags = (
        ("torch_ops", args.torch_ops),
        ("autograd", args.autograd),
        ("graphs", args.cuda_graphs),
        ("bf16", args.bf16),
    )
    variants = [v for v, on in flags if on]
    names = ["nn.LSTM"] + (["nn.LSTM:bf16"] if args.bf16 else [])
    for base in ["hmlstm"] + (["layer_norm", "ln_lstm"] if args.layer_norm else []):
        names += [base, *(f"{base}:{v}" for v in variants)]
    if args.reference:
        names.append("reference")
    return ["autograd" if n == "hmlstm:autograd" else n for n in names]


def measure(args: argparse.Namespace, H: int, B: int, device: torch.device) -> list[dict]:
    torch.manual_seed(0)
    T = args.length
    models, x, bounds = build(model_names(args), H, B, vars(args), device)
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
        for _ in range(args.warmup):
            for step in steps.values():
                step()
        times: dict[str, list[float]] = {n: [] for n in steps}
        for _ in range(args.repeats):  # interleaved rounds
            for name, step in steps.items():
                times[name].append(timed(step, device))
        for name in steps:
            ratios = [t / base for t, base in zip(times[name], times["nn.LSTM"], strict=True)]
            row = {
                "mode": mode,
                "H": H,
                "B": B,
                "model": name,
                "seconds": statistics.median(times[name]),
                "chars_per_sec": T * B / statistics.median(times[name]),
                "ratio": statistics.median(ratios),
                "spread": (min(ratios), max(ratios)),
            }
            if mode == "train" and device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
                steps[name]()
                row["peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
            elif mode == "train" and args.memory:
                row["peak_mb"] = peak_cpu_mb(args, name, H, B)
            rows.append(row)
    if bounds is not None:
        ops = operation_counts(bounds) / (T * B)
        active = (ops[:, 0] + ops[:, 2]).tolist()
        print(f"imposed boundaries: layer activity {', '.join(f'{a:.0%}' for a in active)}")
    return rows


def table(rows: list[dict]) -> str:
    has_peak = any("peak_mb" in r for r in rows)
    head = "| mode | H | B | model | chars/s | time / nn.LSTM | spread |"
    sep = "|---|---:|---:|---|---:|---:|---:|"
    if has_peak:
        head, sep = head + " peak MB | MB / nn.LSTM |", sep + "---:|---:|"
    lines = [head, sep]
    key = lambda r: (r["mode"], r["H"], r["B"])  # noqa: E731
    lstm_mb = {key(r): r.get("peak_mb") for r in rows if r["model"] == "nn.LSTM"}
    for r in rows:
        line = (
            f"| {r['mode']} | {r['H']} | {r['B']} | {r['model']} | {r['chars_per_sec']:,.0f} "
            f"| {r['ratio']:.2f}x | {r['spread'][0]:.2f}-{r['spread'][1]:.2f} |"
        )
        if has_peak:
            base = lstm_mb.get(key(r))
            peak = f" {r['peak_mb']:.0f} |" if "peak_mb" in r else " |"
            ratio = f" {r['peak_mb'] / base:.2f}x |" if "peak_mb" in r and base else " |"
            line += peak + ratio
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
    parser.add_argument(
        "--autograd", action="store_true", help="also time the HM-LSTM built from autograd ops"
    )
    parser.add_argument(
        "--torch-ops",
        action="store_true",
        help="also time the loop without its C++ cell (HMLSTM.native = False)",
    )
    parser.add_argument(
        "--layer-norm",
        action="store_true",
        help="also time the HM-LSTM with layer norm and the LN-LSTM baseline",
    )
    parser.add_argument(
        "--cuda-graphs",
        action="store_true",
        help="also time the loop captured into CUDA graphs (cuda_graphs = True; CUDA training)",
    )
    parser.add_argument(
        "--bf16", action="store_true", help="also time every model under bf16 autocast"
    )
    parser.add_argument(
        "--memory", action="store_true", help="measure each training step's peak memory (CPU)"
    )
    parser.add_argument(
        "--_memory-child", dest="memory_child", default=None, help=argparse.SUPPRESS
    )
    parser.add_argument("--repeats", type=int, default=7, help="interleaved rounds")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--markdown", default=None, help="append the table to this file")
    args = parser.parse_args()
    if args.memory_child:
        memory_child(json.loads(args.memory_child))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.cuda_graphs:  # the graphs are captured after their warm-up calls
        from hmrnn.core.fused.graphs import WARMUP

        args.warmup = max(args.warmup, WARMUP + 2)
    if args.rates and len(args.rates) != args.layers:
        parser.error(f"--rates needs {args.layers} values (one per layer), got {args.rates}")
    device = torch.device(args.device)
    header = (
        f"torch {torch.__version__}, device {device}"
        f"{' (' + torch.cuda.get_device_name() + ')' if device.type == 'cuda' else ''}, "
        f"{torch.get_num_threads()} threads, K={args.layers}, T={args.length}, "
        f"H_in={args.input_size}, {args.repeats} interleaved rounds, boundaries: "
        f"{'imposed ' + '/'.join(f'{r:.0%}' for r in args.rates) if args.rates else 'learned'}"
    )
    print(header + "\n", flush=True)
    rows = []
    for H in args.hidden:
        for B in args.batch:
            rows += measure(args, H, B, device)
            per_size = len(args.mode) * len(model_names(args))
            print(table(rows[-per_size:]), flush=True)
    text = f"{header}\n\n{table(rows)}\n"
    print("\n" + text)
    if args.markdown:
        with open(args.markdown, "a") as f:
            command = " ".join(["python benchmarks/throughput.py", *sys.argv[1:]])
            f.write(f"\n```\n{command}\n```\n\n{text}")


if __name__ == "__main__":
    main()
