"""The prepared check for a lent GPU: correctness, speed against cuDNN, bf16, a short real run.

    python benchmarks/gpu_check.py --out "$OUT"                 # on the GPU machine
    python benchmarks/gpu_check.py --device cpu --quick --out /tmp/check   # its smoke test here

One command, so that a lease of a few minutes covers it (``device`` tool: run it with a
timeout that leaves time to rerun). It writes into ``--out``:

- ``correctness.json``: on the device, the hand-written loop against the reference in float64
  (every estimator x layer norm x grad_through_ops, outputs and every gradient), and the
  LN-LSTM's loop against its autograd loop; the largest differences.
- ``throughput.md``: ``benchmarks/throughput.py`` on the device (training and evaluation,
  H = 512 and 1024, batch 64, with layer norm and the LN-LSTM, eager, CUDA graphs and bf16
  autocast), against cuDNN's nn.LSTM.
- ``bf16.json``: a training step of the HM-LSTM in float32 and under bf16 autocast.
- ``graphs.json``: training steps captured into CUDA graphs against eager ones (differences,
  times, captures).
- ``copy_skipping.json``: what leaving out COPY rows could save on the device (the step
  multiply over fewer rows; imposed sparse boundaries against all-updating ones).
- ``train.log``: ``experiment=ptb`` for a few hundred steps on one device (PTB-char from
  ``--data``); ``train_ddp.log`` the same on two devices with DDP, where there are two.
- ``tests.log``: on a GPU, the Triton, mixed-precision and CUDA-graph tests (where pytest is
  installed), which CPU machines run with the kernels interpreted.

Nothing here asserts a speed: the numbers go to docs/performance.md with the card's name.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from hmrnn.core import HMLSTM, HMLSTMState, StackedLSTM, reference_forward

ROOT = Path(__file__).resolve().parents[1]


def largest_differences(fast, slow, rnn, x, state) -> dict[str, float]:
    """Outputs and gradients of ``fast`` and ``slow`` (callables like ``rnn(x, state)``):
    the largest absolute difference of the outputs and of any gradient."""
    results = []
    for call in (fast, slow):
        rnn.zero_grad(set_to_none=True)
        xg = x.detach().requires_grad_()
        torch.manual_seed(1)
        out, last, bounds = call(xg, state)
        weights = torch.linspace(-1, 1, out.numel(), device=x.device, dtype=x.dtype)
        loss = (out * weights.view_as(out)).sum() + last.c.pow(2).sum() + (bounds * 0.3).sum()
        loss.backward()
        grads = [p.grad for p in rnn.parameters()] + [xg.grad]
        results.append((out.detach(), grads))
    (a, ga), (b, gb) = results
    grad_diff = max(float((u - v).abs().max()) for u, v in zip(ga, gb, strict=True))
    return {"output": float((a - b).abs().max()), "gradients": grad_diff}


def correctness(device: torch.device, quick: bool) -> dict[str, dict[str, float]]:
    T, B, H_in, H = (6, 3, 5, 8) if quick else (20, 8, 16, 32)
    found = {}
    variants = itertools.product(["step", "soft", "bernoulli"], [False, True], [True, False])
    for boundary, layer_norm, gto in variants:
        torch.manual_seed(0)
        rnn = HMLSTM(H_in, H, 3, layer_norm=layer_norm, boundary=boundary, grad_through_ops=gto)
        rnn = rnn.double().to(device)
        x = torch.randn(T, B, H_in, dtype=torch.float64, device=device)
        state = HMLSTMState(
            torch.randn(3, B, H, dtype=torch.float64, device=device),
            torch.randn(3, B, H, dtype=torch.float64, device=device),
            torch.randint(0, 2, (3, B), device=device).double(),
        )
        name = f"{boundary}/layer_norm={layer_norm}/grad_through_ops={gto}"
        found[name] = largest_differences(
            lambda x, s, r=rnn: r(x, s), lambda x, s, r=rnn: reference_forward(r, x, s), rnn, x,
            state,
        )  # fmt: skip
    stack = StackedLSTM(H_in, H, 3, layer_norm=True).double().to(device)
    x = torch.randn(T, B, H_in, dtype=torch.float64, device=device)

    def autograd_loop(x, s):
        stack.fused = False
        try:
            return stack(x, s)
        finally:
            stack.fused = True

    found["ln_lstm"] = largest_differences(lambda x, s: stack(x, s), autograd_loop, stack, x, None)
    return found


def bf16_step(device: torch.device, quick: bool) -> dict[str, float]:
    """Median seconds of a training step in float32 and under bf16 autocast (5 rounds)."""
    H, B = (32, 4) if quick else (512, 64)
    rnn = HMLSTM(128, H, 3, layer_norm=True).to(device)
    x = torch.randn(20 if quick else 100, B, 128, device=device)
    times: dict[str, list[float]] = {"float32": [], "bf16_autocast": []}
    for _ in range(5):
        for name in times:
            sync(device)
            start = time.perf_counter()
            with torch.autocast(device.type, torch.bfloat16, enabled=name != "float32"):
                out = rnn(x)[0]
            out.float().sum().backward()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def graphs_check(device: torch.device, quick: bool) -> dict[str, dict[str, float]]:
    """Training steps with ``cuda_graphs`` against eager ones, per layer norm setting: the
    largest differences of the output and of any gradient (after the capture), the median step
    times (7 interleaved rounds) and the number of captures (CPU: eager both ways, 0)."""
    from hmrnn.core.fused.graphs import WARMUP

    H, B, T = (16, 4, 10) if quick else (512, 64, 100)
    found = {}
    for layer_norm in (False, True):
        torch.manual_seed(0)
        rnn = HMLSTM(128, H, 3, layer_norm=layer_norm).to(device)
        x = torch.randn(T, B, 128, device=device)
        w = torch.linspace(-1, 1, T * B * 3 * H, device=device).view(T, B, 3, H)

        def step(graphed: bool, rnn=rnn, x=x, w=w):
            rnn.cuda_graphs = graphed
            rnn.zero_grad(set_to_none=True)
            out = rnn(x.detach().requires_grad_())[0]
            (out * w).sum().backward()
            return out.detach().clone(), [p.grad.clone() for p in rnn.parameters()]

        eager_out, eager_grads = step(False)
        for _ in range(WARMUP + 2):
            out, grads = step(True)
        times: dict[str, list[float]] = {"eager": [], "graphed": []}
        for _ in range(7):
            for name in times:
                sync(device)
                start = time.perf_counter()
                step(name == "graphed")
                sync(device)
                times[name].append(time.perf_counter() - start)
        graphs = rnn.__dict__.get("_cuda_graphs")
        found[f"layer_norm={layer_norm}"] = {
            "output": float((out - eager_out).abs().max()),
            "gradients": max(
                float((a - b).abs().max()) for a, b in zip(grads, eager_grads, strict=True)
            ),
            "eager_s": statistics.median(times["eager"]),
            "graphed_s": statistics.median(times["graphed"]),
            "captures": graphs.captures if graphs is not None else 0,
        }
    return found


def copy_skipping(device: torch.device, quick: bool) -> dict[str, float]:
    """What leaving out COPY rows could save on this device (issue 17's question): the median
    time of a layer's step multiply over all B rows against over B/5 and B/20 rows (the paper's
    20 % and 5 % update rates, after compacting the working rows), and of a training step with
    imposed 100/20/5 % boundaries against all layers updating (the loop's masked cells do the
    same work for both)."""
    H, B, T = (16, 20, 10) if quick else (512, 64, 100)
    found = {}
    x = torch.randn(B, 3 * H, device=device)
    w = torch.randn(3 * H, 4 * H + 1, device=device)
    for rows in (B, B // 5, B // 20):
        xs = x[: max(rows, 1)].contiguous()
        sync(device)
        start = time.perf_counter()
        for _ in range(200):
            xs @ w
        sync(device)
        found[f"multiply_{max(rows, 1)}_rows_us"] = (time.perf_counter() - start) / 200 * 1e6
    torch.manual_seed(0)
    rnn = HMLSTM(128, H, 3).to(device)
    inp = torch.randn(T, B, 128, device=device)
    sparse = torch.rand(T, B, 3, device=device) < torch.tensor([0.2, 0.05, 0.0], device=device)
    dense = torch.ones(T, B, 3, device=device)
    dense[..., 2] = 0
    times: dict[str, list[float]] = {"all_update": [], "imposed_100_20_5": []}
    for _ in range(6):
        for name, bounds in (("all_update", dense), ("imposed_100_20_5", sparse.float())):
            sync(device)
            start = time.perf_counter()
            rnn(inp.detach().requires_grad_(), None, bounds)[0].sum().backward()
            sync(device)
            times[name].append(time.perf_counter() - start)
    for name, values in times.items():
        found[f"train_step_{name}_s"] = statistics.median(values[1:])
    return found


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run(command: list[str], log: Path, timeout: int) -> int:
    """A subprocess with its output in ``log``; its exit status (124 on timeout)."""
    with open(log, "w") as f:
        f.write(" ".join(command) + "\n\n")
        f.flush()
        try:
            return subprocess.run(command, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT,
                                  timeout=timeout).returncode  # fmt: skip
        except subprocess.TimeoutExpired:
            f.write(f"\n(stopped after {timeout} s)\n")
            return 124


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", default=os.environ.get("OUT", "gpu_check"))
    parser.add_argument("--data", default=None, help="PTB-char folder (../shared/data/ptb-char)")
    parser.add_argument("--steps", type=int, default=300, help="steps of the real run")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test)")
    args = parser.parse_args()
    device = torch.device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    about = {"torch": torch.__version__, "device": str(device)}
    if device.type == "cuda":
        about["card"] = torch.cuda.get_device_name()
    print(json.dumps(about), flush=True)

    if device.type == "cuda" and importlib.util.find_spec("pytest") is not None:
        # the kernels compiled for this device (CPU machines test them interpreted)
        tests = [sys.executable, "-m", "pytest", "-q", "tests/core/test_triton.py",
                 "tests/core/test_mixed.py", "tests/core/test_graphs.py"]  # fmt: skip
        status = run(tests, out / "tests.log", timeout=300)
        print(f"Triton, mixed-precision and graph tests on the device: exit {status}")

    found = correctness(device, args.quick)
    (out / "correctness.json").write_text(json.dumps({**about, "max_abs_diff": found}, indent=1))
    worst = max(max(d.values()) for d in found.values())
    print(f"correctness (float64, loop against reference): largest difference {worst:.2e}")

    sizes = ["--hidden", "32", "--batch", "4", "--length", "10"] if args.quick else [
        "--hidden", "512", "1024", "--batch", "64"]  # fmt: skip
    bench = [sys.executable, "benchmarks/throughput.py", *sizes, "--mode", "train", "eval",
             "--layer-norm", "--cuda-graphs", "--bf16", "--device", args.device,
             "--repeats", "2" if args.quick else "7",
             "--warmup", "1", "--markdown", str((out / "throughput.md").resolve())]  # fmt: skip
    status = run(bench, out / "throughput.log", timeout=120 if args.quick else 300)
    print(f"throughput: exit {status}, table in {out / 'throughput.md'}")

    timing = bf16_step(device, args.quick)
    (out / "bf16.json").write_text(json.dumps({**about, "median_seconds": timing}, indent=1))
    print(f"bf16: {timing}")

    graphed = graphs_check(device, args.quick)
    (out / "graphs.json").write_text(json.dumps({**about, "graphs": graphed}, indent=1))
    print(f"CUDA graphs: {graphed}")

    skipping = copy_skipping(device, args.quick)
    (out / "copy_skipping.json").write_text(json.dumps({**about, **skipping}, indent=1))
    print(f"COPY skipping: {skipping}")

    data = Path(args.data) if args.data else next(
        (p for p in (ROOT / "shared/data/ptb-char", ROOT.parent / "shared/data/ptb-char")
         if p.is_dir()), None)  # fmt: skip
    if data is None:
        print("real run: skipped (no PTB-char folder; pass --data)")
        return
    accelerator = "gpu" if device.type == "cuda" else "cpu"
    steps = 5 if args.quick else args.steps
    train = [sys.executable, "-m", "hmrnn.train", "experiment=ptb", f"data.local_dir={data}",
             f"trainer.max_steps={steps}", f"trainer.accelerator={accelerator}",
             "trainer.devices=1", f"trainer.val_check_interval={min(100, steps)}",
             "trainer.limit_val_batches=5", "test=false", "logger.mode=disabled",
             f"out_dir={(out / 'runs').resolve()}"]  # fmt: skip
    if args.quick:
        train += ["model.hidden_size=32", "data.batch_size=4", "trainer.limit_val_batches=1"]
    status = run(train, out / "train.log", timeout=120 if args.quick else 400)
    print(f"real run ({steps} steps of experiment=ptb): exit {status}, log in {out / 'train.log'}")
    if device.type == "cuda" and torch.cuda.device_count() >= 2:
        kept = [a for a in train if not a.startswith(("trainer.devices=", "out_dir="))]
        ddp = [*kept, "trainer.devices=2", "trainer.strategy=ddp",
               f"out_dir={(out / 'runs_ddp').resolve()}"]  # fmt: skip
        status = run(ddp, out / "train_ddp.log", timeout=400)
        print(f"real run on 2 devices (DDP): exit {status}, log in {out / 'train_ddp.log'}")


if __name__ == "__main__":
    main()
