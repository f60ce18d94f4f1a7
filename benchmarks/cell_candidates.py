"""The candidates for the loop's fused per-step cell, one cell's forward and backward per call.

    python benchmarks/cell_candidates.py 64 256      # rows (batch) and hidden size

Times, in one process, interleaved over 7 rounds of 200 calls each: the torch-operation cell of
:mod:`hmrnn.core.fused.cell` (the loop's fallback), ``torch.compile`` of the same arithmetic
written as one function, and the C++ cell of :mod:`hmrnn.core.fused.native` (a layer above the
first, no layer norm, training). Prints the median time per call and the range over the rounds,
and torch.compile's first (compiling) call. docs/performance.md has the numbers.
"""

from __future__ import annotations

import statistics
import sys
import time

import torch

from hmrnn.core import HMLSTM
from hmrnn.core.fused import native
from hmrnn.core.fused.cell import LoopSpec, cell_backward, cell_forward


def main() -> None:
    torch.set_num_threads(2)
    M, H = int(sys.argv[1]), int(sys.argv[2])
    G = 4 * H + 1
    spec = LoopSpec.of(HMLSTM(8, H, 3), True, torch.device("cpu"), torch.float32)
    cpp = native.kernels()
    assert cpp is not None, "the C++ cell could not be built here"
    s, cp, hp = torch.randn(M, G), torch.randn(M, H), torch.randn(M, H)
    fl, zi = torch.randint(0, 2, (M, 1)).float(), torch.randint(0, 2, (M, 1)).float()
    gates, ds = torch.empty(M, G), torch.empty(M, G)
    cn, tc, hn = torch.empty(M, H), torch.empty(M, H), torch.empty(M, H)
    gh, gc = torch.randn(M, H), torch.randn(M, H)

    def torch_ops() -> None:
        cell_forward(spec, 1, s, cp, hp, fl, zi, (gates, cn, tc, hn))
        cell_backward(spec, gates, tc, cp, hp, fl, zi, gh, gc, ds)

    def functional(s, cp, hp, fl, zi, gh, gc):  # the same arithmetic, one function
        a = torch.sigmoid(s[:, : 4 * H])
        i, f, o, g = a[:, :H], a[:, H : 2 * H], a[:, 2 * H : 3 * H], a[:, 3 * H :] * 2 - 1
        keep = 1 - fl
        update, copy = keep * zi, keep * (1 - zi)
        act = 1 - copy
        c = copy * cp + update * (f * cp) + act * (i * g)
        t = torch.tanh(c)
        h = copy * hp + act * (o * t)
        gah = gh * act
        g_ct = gc + gah * o * (1 - t * t)
        gca = g_ct * act
        d = [gca * g * i * (1 - i), g_ct * update * cp * f * (1 - f), gah * t * o * (1 - o)]
        d.append(gca * i * (1 - g * g) * 0.5)
        g_update = (g_ct * f * cp).sum(1, keepdim=True)
        g_copy = (gh * (hp - o * t) + g_ct * (cp - i * g)).sum(1, keepdim=True)
        g_c_prev = g_ct * (update * f + copy)
        return c, t, h, torch.cat(d, 1), g_c_prev, copy * gh, (g_update - g_copy) * keep

    compiled = torch.compile(functional, dynamic=False)

    def compile_call() -> None:
        compiled(s, cp, hp, fl, zi, gh, gc)

    def cpp_call() -> None:
        cpp.cell_forward(s, cp, hp, fl, zi, gates, cn, tc, hn, None, 0, 1.0, None, None, None)
        cpp.cell_backward(gates, tc, cp, hp, fl, zi, gh, gc, ds, True, 1, 1.0, None, *(None,) * 5)

    start = time.perf_counter()
    compile_call()
    first = time.perf_counter() - start
    candidates = {"torch ops": torch_ops, "torch.compile": compile_call, "C++ cell": cpp_call}
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(7):
        for name, call in candidates.items():
            start = time.perf_counter()
            for _ in range(200):
                call()
            times[name].append((time.perf_counter() - start) / 200 * 1e6)
    print(f"M = {M}, H = {H}: torch.compile's first call {first:.1f} s")
    for name, values in times.items():
        print(
            f"  {name:14s} median {statistics.median(values):6.1f} us per call "
            f"(range {min(values):.1f}-{max(values):.1f})"
        )


if __name__ == "__main__":
    main()
