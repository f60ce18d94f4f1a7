"""The C++ cell (hmrnn.core.fused.native) against the torch-operation loop, its fallback, and the
buffer pool.

tests/core/test_reference.py runs every variant both ways (``native`` on and off) against the
reference in float64; these tests cover float32 (the C++ cell's own exp), a build that fails,
the switches, and that pooled buffers never leak into outputs.
"""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import sys

import pytest
import torch

from hmrnn.core import HMLSTM, HMLSTMState, StackedLSTM, fused
from hmrnn.core.fused import LoopSpec, native, pool

needs_compiler = pytest.mark.skipif(
    shutil.which("c++") is None and shutil.which("g++") is None,
    reason="no C++ compiler on this machine: the loop runs torch operations (tested elsewhere)",
)

T, B, H_IN, H = 11, 6, 5, 12


def run(rnn, native_on: bool, x, state, boundaries=None):
    """Outputs and gradients (of a loss touching every output) with the C++ cell on or off."""
    rnn.native = native_on
    rnn.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_()
    torch.manual_seed(5)
    out, last, bounds = rnn(x, state, boundaries) if boundaries is not None else rnn(x, state)
    loss = (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum()
    loss = loss + last.c.pow(2).sum() + last.h.sum() + (bounds * 0.3).sum()
    loss.backward()
    grads = {n: p.grad for n, p in rnn.named_parameters()}
    grads["x"] = x.grad
    return (out.detach(), last.h.detach(), last.c.detach(), bounds.detach()), grads


@needs_compiler
def test_the_cell_builds_here_and_reports_its_build_time() -> None:
    assert native.kernels() is not None, "a machine with a compiler must build the C++ cell"
    assert native.build_seconds is not None and native.build_seconds >= 0
    spec = LoopSpec.of(HMLSTM(3, 4, 2), True, torch.device("cpu"), torch.float32)
    assert spec.native and spec.sample_mode == 1 and spec.grad_mode == 1


def assert_as_accurate(model, make_inputs) -> None:
    """float32 with the C++ cell is as close to float64 as float32 with torch operations: the
    cell's polynomial exp and its sums in another order round differently, not worse."""
    x, state = make_inputs(torch.float64)
    truth, truth_grads = run(model.double(), True, x, state)
    model.float()
    x, state = make_inputs(torch.float32)
    results = [run(model, native_on, x, state) for native_on in (True, False)]
    (got, got_grads), (torch_ops, torch_ops_grads) = results
    pairs = [(got, torch_ops, truth)] + [
        ([got_grads[n]], [torch_ops_grads[n]], [g]) for n, g in truth_grads.items()
    ]
    for ours, theirs, want in pairs:
        for a, b, w in zip(ours, theirs, want, strict=True):
            err_native = (a.double() - w).abs().max().item()
            err_torch_ops = (b.double() - w).abs().max().item()
            scale = 1 + w.abs().max().item()
            assert err_native <= 4 * err_torch_ops + 1e-6 * scale, (
                err_native,
                err_torch_ops,
                a.shape,
            )


@needs_compiler
@pytest.mark.parametrize(
    ("boundary", "layer_norm", "training"),
    list(itertools.product(["step", "soft"], [False, True], [True, False])),
)
def test_float32_cell_is_as_accurate_as_torch_operations(boundary, layer_norm, training) -> None:
    torch.manual_seed(0)
    rnn = HMLSTM(H_IN, H, 3, layer_norm=layer_norm, boundary=boundary).train(training)
    with torch.no_grad():
        rnn.slope.fill_(1.7)
        for l in range(3):
            rnn.param("bias", l).uniform_(-0.5, 0.5)
    x = torch.randn(T, B, H_IN) * 3
    state = HMLSTMState(torch.randn(3, B, H), torch.randn(3, B, H), torch.ones(3, B))
    inputs = lambda dtype: (x.to(dtype), HMLSTMState(*(s.to(dtype) for s in state)))  # noqa: E731
    if boundary == "step":  # the same boundaries in float32 both ways
        rnn.float()
        got = run(rnn, True, *inputs(torch.float32))[0]
        want = run(rnn, False, *inputs(torch.float32))[0]
        assert torch.equal(got[3], want[3])
    assert_as_accurate(rnn, inputs)


@needs_compiler
def test_ln_lstm_float32_cell_is_as_accurate_as_torch_operations() -> None:
    torch.manual_seed(0)
    stack = StackedLSTM(H_IN, H, 3, layer_norm=True)
    x = torch.randn(T, B, H_IN)
    state = HMLSTMState(torch.randn(3, B, H), torch.randn(3, B, H), torch.zeros(3, B))
    assert_as_accurate(
        stack, lambda dtype: (x.to(dtype), HMLSTMState(*(s.to(dtype) for s in state)))
    )


def test_a_failed_build_falls_back_to_torch_operations(monkeypatch, caplog) -> None:
    """No compiler (or no ninja): one warning naming the way out, and the same numbers."""
    torch.manual_seed(0)
    rnn = HMLSTM(H_IN, H, 3, layer_norm=True).double()
    x = torch.randn(T, B, H_IN, dtype=torch.float64)
    rnn.native = False
    want = rnn(x)[0].detach()

    def broken(*args, **kwargs):
        raise RuntimeError("Ninja is required to load C++ extensions\nmore lines")

    monkeypatch.setattr(native, "_module", None)
    monkeypatch.setattr(native, "_tried", False)
    monkeypatch.setattr(torch.utils.cpp_extension, "load", broken)
    with caplog.at_level(logging.WARNING, logger="hmrnn.core.fused.native"):
        assert native.kernels() is None
        assert native.kernels() is None  # tried once per process
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "Ninja is required" in warnings[0] and "HMRNN_NATIVE=0" in warnings[0]
    rnn.native = True
    assert not LoopSpec.of(rnn, True, x.device, x.dtype).native
    torch.testing.assert_close(rnn(x)[0].detach(), want, rtol=0, atol=0)


def test_the_build_runs_the_interpreters_own_ninja(monkeypatch, tmp_path) -> None:
    """torch runs the ninja PATH finds first; ninja versions record commands differently, so the
    build always takes the one beside the interpreter (pip's), whatever PATH says."""
    (tmp_path / "ninja").write_text("")
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", "/usr/bin")
    with native._own_ninja():
        assert os.environ["PATH"] == f"{tmp_path}{os.pathsep}/usr/bin"
    assert os.environ["PATH"] == "/usr/bin"
    (tmp_path / "ninja").unlink()  # none there: PATH as it is
    with native._own_ninja():
        assert os.environ["PATH"] == "/usr/bin"


def test_environment_variable_turns_the_cell_off(monkeypatch) -> None:
    monkeypatch.setenv("HMRNN_NATIVE", "0")
    assert not native.enabled()
    assert not LoopSpec.of(HMLSTM(3, 4, 2), True, torch.device("cpu"), torch.float32).native


def test_pooled_buffers_never_alias_outputs() -> None:
    """The loop's buffers go back to the pool and are reused by the next pass: what an earlier
    pass returned must stay as it was (a single layer's boundaries included)."""
    for K, layer_norm in itertools.product([1, 3], [False, True]):
        torch.manual_seed(0)
        rnn = HMLSTM(H_IN, H, K, layer_norm=layer_norm, top_layer_boundary=True)
        x = torch.randn(T, B, H_IN)
        for grad in (False, True):
            with torch.set_grad_enabled(grad):
                first = rnn(x)
                kept = [first[0].clone(), *(s.clone() for s in first[1]), first[2].clone()]
                rnn(torch.randn(T, B, H_IN) * 5)  # reuses the buffers
            got = [first[0], *first[1], first[2]]
            for a, b in zip(got, kept, strict=True):
                assert torch.equal(a, b)
    assert pool.POOL.kept_bytes > 0, "the buffers of finished passes are kept for reuse"


def test_pool_keeps_at_most_its_limit_giving_up_the_least_recently_used() -> None:
    small = pool.BufferPool(keep_bytes=1000)
    like = torch.zeros(1)
    a, b = small.take(like, 100), small.take(like, 100)  # 400 bytes each
    small.give([a, b])
    assert small.kept_bytes == 800
    assert small.take(like, 100) is not None and small.kept_bytes == 400
    c = small.take(like, 50)  # 200 bytes: another shape
    small.give([c])
    d = small.take(like, 120)  # 480 bytes: the newest; the least recently used (100) goes
    small.give([d])
    assert small.kept_bytes == 680
    assert small.take(like, 100) is not a and small.kept_bytes == 680
    assert torch.equal(small.take(like, 3, zero=True), torch.zeros(3))


def test_buffers_made_in_inference_mode_are_not_reused_outside_it() -> None:
    """Lightning validates under torch.inference_mode: its buffers may only be written there."""
    rnn = HMLSTM(H_IN, H, 2, layer_norm=True)
    x = torch.randn(T, B, H_IN)
    with torch.inference_mode():
        want = rnn(x)[0].clone()
    with torch.no_grad():
        got = rnn(x)[0]
    rnn(x)[0].sum().backward()
    torch.testing.assert_close(got, want)


def test_a_training_step_returns_its_buffers_to_the_pool(monkeypatch) -> None:
    """Once autograd lets go of the graph the loop's buffers are free for the next step (a
    reference from the loop to its returned output would keep them, and the graph, forever)."""
    fresh = pool.BufferPool()
    monkeypatch.setattr(fused.loop, "POOL", fresh)
    for layer_norm in (False, True):
        rnn = HMLSTM(H_IN, H, 3, layer_norm=layer_norm)
        for _ in range(3):
            rnn(torch.randn(T, B, H_IN))[0].sum().backward()
        assert fresh.kept_bytes > 0
        kept = fresh.kept_bytes
        rnn(torch.randn(T, B, H_IN))[0].sum().backward()
        assert fresh.kept_bytes == kept, "a steady step takes and returns the same buffers"
        fresh.clear()


def test_an_in_place_change_of_the_output_is_refused_at_backward() -> None:
    rnn = HMLSTM(H_IN, H, 2)
    out = rnn(torch.randn(T, B, H_IN))[0]
    out.mul_(2.0)
    with pytest.raises(RuntimeError, match="in-place"):
        out.sum().backward()
