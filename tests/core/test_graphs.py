"""CUDA graphs of the loop (hmrnn.core.fused.graphs): what can be checked without a GPU.

The capture itself needs a device (benchmarks/gpu_check.py compares graphed and eager training
steps on one). Here: the bookkeeping of :class:`CudaGraphs` with a stand-in for
``torch.cuda.make_graphed_callables`` (warm-up, one capture per shape, replays, a bounded
number of graphs, the slope in the key where Python reads it), that CPU calls run eagerly, and
that the buffer pool keeps out of a graph's buffers. tests/core/test_triton.py checks that a
training step never synchronises with the device, which capture requires.
"""

from __future__ import annotations

import torch

from hmrnn.core import HMLSTM, HMLSTMState
from hmrnn.core.fused import graphs, loop, pool


class StandIn:
    """Records captures; its "graph" runs the module eagerly (as a replay computes the same)."""

    def __init__(self) -> None:
        self.captured: list[tuple] = []
        self.replays = 0

    def __call__(self, module, samples):
        self.captured.append(tuple(s.shape for s in samples))

        def replay(*args):
            self.replays += 1
            return module(*args)

        return replay


def call(rnn, g, T: int, B: int, seed: int = 0):
    torch.manual_seed(seed)
    x = torch.randn(T, B, 3, requires_grad=True)
    state = rnn.zero_state(B, x)
    out, last, _ = g(x, state, None)
    (out.sum() + last.c.sum()).backward()
    return out.detach(), x.grad


def test_warm_up_then_one_capture_per_shape_then_replays() -> None:
    torch.manual_seed(0)
    rnn = HMLSTM(3, 8, 2)
    stand_in = StandIn()
    g = graphs.CudaGraphs(rnn, capture=stand_in)
    for _ in range(graphs.WARMUP):
        call(rnn, g, 5, 4)
    assert stand_in.captured == []
    for _ in range(3):
        out, grad = call(rnn, g, 5, 4)
    assert len(stand_in.captured) == 1 and stand_in.replays == 3
    want_out, want_grad = call(rnn, lambda x, s, b: rnn(x, s, b), 5, 4)
    torch.testing.assert_close(out, want_out)
    torch.testing.assert_close(grad, want_grad)
    for _ in range(graphs.WARMUP + 1):  # another shape (a last short batch): its own graph
        call(rnn, g, 5, 2)
    assert len(stand_in.captured) == 2 and len(g.graphs) == 2


def test_at_most_max_graphs_are_kept() -> None:
    rnn = HMLSTM(3, 8, 2)
    g = graphs.CudaGraphs(rnn, capture=StandIn())
    for B in range(1, graphs.MAX_GRAPHS + 3):
        for _ in range(graphs.WARMUP + 1):
            call(rnn, g, 3, B)
    assert len(g.graphs) == graphs.MAX_GRAPHS
    assert g.captures == graphs.MAX_GRAPHS + 2


def test_a_slope_read_in_python_is_part_of_the_key() -> None:
    """Bernoulli in training samples in Python with the slope as a number: a new slope means
    a new graph. (The Triton cell reads the slope on the device instead.)"""
    rnn = HMLSTM(3, 8, 2, boundary="bernoulli")
    stand_in = StandIn()
    g = graphs.CudaGraphs(rnn, capture=stand_in)
    for _ in range(graphs.WARMUP + 1):
        call(rnn, g, 3, 2)
    rnn.set_slope(2.0)
    for _ in range(graphs.WARMUP + 1):
        call(rnn, g, 3, 2)
    assert len(stand_in.captured) == 2


def test_cpu_calls_run_eagerly_with_cuda_graphs_on() -> None:
    torch.manual_seed(0)
    rnn = HMLSTM(3, 8, 2)
    x = torch.randn(4, 2, 3, requires_grad=True)
    want = rnn(x)[0]
    rnn.cuda_graphs = True
    torch.testing.assert_close(rnn(x)[0], want)
    assert rnn.__dict__["_cuda_graphs"].captures == 0


def test_the_pool_keeps_out_of_a_graphs_buffers(monkeypatch) -> None:
    """While capturing, buffers are new (not the pool's) and none is given back, then or when
    the captured loop is collected (its memory is the graph's)."""
    p = pool.BufferPool()
    like = torch.zeros(1)
    p.give([torch.zeros(4)])
    kept = p.kept_bytes
    monkeypatch.setattr(pool, "capturing", lambda t: True)
    fresh = p.take(like, 4)
    assert p.kept_bytes == kept, "the free buffer stayed in the pool"
    p.give([fresh])
    assert p.kept_bytes == kept
    monkeypatch.setattr(loop, "capturing", lambda t: True)
    monkeypatch.setattr(loop, "POOL", p)
    rnn = HMLSTM(3, 8, 2)
    x = torch.randn(3, 2, 3)
    rnn(x, HMLSTMState(*rnn.zero_state(2, x)))
    import gc

    gc.collect()
    assert p.kept_bytes == kept


def test_a_copy_or_pickle_of_the_module_carries_no_graphs() -> None:
    import copy
    import pickle

    rnn = HMLSTM(3, 8, 2)
    g = graphs.CudaGraphs(rnn, capture=StandIn())
    rnn.__dict__["_cuda_graphs"] = g
    for _ in range(graphs.WARMUP + 1):
        call(rnn, g, 3, 2)
    assert len(g.graphs) == 1
    for clone in (copy.deepcopy(rnn), pickle.loads(pickle.dumps(rnn))):
        carried = clone.__dict__["_cuda_graphs"]
        assert carried.graphs == {} and carried.rnn is clone


def test_diagnostics_taps_bypass_the_graphs(monkeypatch) -> None:
    """A tapped pass (hmrnn.core.diagnostics) runs the autograd path, never a graph replay
    (which would not record the taps)."""
    import hmrnn.core.hmlstm as hmlstm
    from hmrnn.core.autograd_step import Taps

    def refuse(*args, **kwargs):
        raise AssertionError("a tapped pass reached the graphs")

    monkeypatch.setattr(hmlstm, "graphed_call", refuse)
    rnn = HMLSTM(3, 8, 2)
    rnn.cuda_graphs = True
    taps = Taps(2)
    with rnn.tapped(taps):
        rnn(torch.randn(4, 2, 3))
    assert len(taps.preacts[0]) == 4
