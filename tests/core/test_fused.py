"""The hand-written loop (hmrnn.core.fused) against the autograd HM-LSTM and the reference.

tests/core/test_reference.py checks every variant in float64 (torch's GEMM); these tests cover
what float64 does not reach: oneDNN's packed multiplies in float32, the fallback when the private
ops fail, the gradient of the initial boundary state, and the weight cache of evaluation.
"""

from __future__ import annotations

import copy
import io
import itertools

import pytest
import torch

from hmrnn.core import HMLSTM, HMLSTMState, fused, reference_forward

T, B, H_IN, H = 12, 9, 5, 16


def make(num_layers=3, dtype=torch.float32, **kwargs) -> HMLSTM:
    torch.manual_seed(0)
    rnn = HMLSTM(H_IN, H, num_layers, **kwargs).to(dtype)
    with torch.no_grad():
        rnn.slope.fill_(1.7)
        for l in range(num_layers):
            rnn.param("bias", l).uniform_(-0.5, 0.5)
    return rnn


def outputs_and_grads(rnn: HMLSTM, fast: bool, boundaries=None, dtype=torch.float32, fn=None):
    torch.manual_seed(3)
    K = rnn.num_layers
    x = torch.randn(T, B, H_IN, dtype=dtype, requires_grad=True)
    state = HMLSTMState(
        torch.randn(K, B, H, dtype=dtype, requires_grad=True),
        torch.randn(K, B, H, dtype=dtype, requires_grad=True),
        torch.randint(0, 2, (K, B)).to(dtype).requires_grad_(),
    )
    rnn.zero_grad(set_to_none=True)
    rnn.fused = fast
    torch.manual_seed(4)
    out, last, bounds = (fn or rnn.__class__.__call__)(rnn, x, state, boundaries)
    weights = torch.linspace(-1, 1, out.numel(), dtype=dtype).view_as(out)
    loss = (out * weights).sum() + last.c.pow(2).sum() + last.h.sum() + (bounds * 0.3).sum()
    loss = loss + (last.z * torch.arange(K * B, dtype=dtype).view(K, B)).sum()
    loss.backward()
    grads = {n: p.grad for n, p in rnn.named_parameters()}
    grads.update(x=x.grad, h0=state.h.grad, c0=state.c.grad, z0=state.z.grad)
    return (out.detach(), *[s.detach() for s in last], bounds.detach()), grads


@pytest.mark.parametrize(
    ("boundary", "grad_through_ops", "top_layer_boundary"),
    list(itertools.product(["step", "bernoulli", "soft"], [True, False], [False, True])),
)
def test_onednn_float32_equals_autograd_path(boundary, grad_through_ops, top_layer_boundary):
    rnn = make(
        boundary=boundary,
        grad_through_ops=grad_through_ops,
        top_layer_boundary=top_layer_boundary,
    )
    step = fused.StepMatmul(rnn.step_weight(1), B)
    assert step.onednn, "this machine's torch should have oneDNN: the test must use it"
    for boundaries in (None, torch.randint(0, 2, (T, B, 3)).float()):
        got, got_grads = outputs_and_grads(rnn, True, boundaries)
        want, want_grads = outputs_and_grads(rnn, False, boundaries)
        if boundary != "soft":
            assert torch.equal(got[4], want[4]), "the same boundaries (step rule or same draws)"
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
        for name in want_grads:
            torch.testing.assert_close(
                got_grads[name], want_grads[name], rtol=1e-3, atol=1e-4, msg=name
            )


def test_gradient_of_the_initial_boundaries_equals_the_reference() -> None:
    for gto in (True, False):
        rnn = make(dtype=torch.float64, grad_through_ops=gto)
        got, got_grads = outputs_and_grads(rnn, True, dtype=torch.float64)
        want, want_grads = outputs_and_grads(
            rnn, True, dtype=torch.float64, fn=lambda r, *a: reference_forward(r, *a)
        )
        assert got_grads["z0"].abs().sum() > 0
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)
        for name in want_grads:
            torch.testing.assert_close(
                got_grads[name], want_grads[name], rtol=1e-9, atol=1e-10, msg=name
            )


def test_falls_back_to_torch_gemm_when_the_private_ops_fail(monkeypatch) -> None:
    rnn = make()
    want, want_grads = outputs_and_grads(rnn, True)

    def broken(*args, **kwargs):
        raise RuntimeError("no such op in this torch build")

    monkeypatch.setattr(torch.ops.mkldnn, "_reorder_linear_weight", broken)
    monkeypatch.setattr(fused.weights, "USE_ONEDNN", True)  # restored after the test
    step = fused.StepMatmul(rnn.step_weight(1), B)
    x = torch.randn(B, step.wt.size(0))
    torch.testing.assert_close(step.forward(x), x @ step.wt)
    assert not step.onednn and not fused.weights.USE_ONEDNN
    got, got_grads = outputs_and_grads(rnn, True)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    for name in want_grads:
        torch.testing.assert_close(got_grads[name], want_grads[name], rtol=1e-3, atol=1e-4)


def test_evaluation_cache_follows_weight_updates() -> None:
    rnn = make().eval()
    x = torch.randn(T, B, H_IN)
    with torch.no_grad():
        first = rnn(x)[0]
        assert torch.equal(rnn(x)[0], first)  # from the cached, packed weights
        rnn.param("weight_hh", 1).mul_(0.5)  # an optimiser step changes weights in place
        second = rnn(x)[0]
    rnn.fused = False
    with torch.no_grad():
        want = rnn(x)[0]
    assert not torch.equal(second, first)
    torch.testing.assert_close(second, want, rtol=1e-4, atol=1e-5)


def test_module_copies_and_saves_after_an_evaluation_pass() -> None:
    """The cache of packed weights is derived data: a copy carries none (oneDNN's packed tensors
    cannot be copied or pickled) and builds its own."""
    rnn = make().eval()
    x = torch.randn(T, B, H_IN)
    with torch.no_grad():
        want = rnn(x)[0]  # fills rnn.fused_weights
    buffer = io.BytesIO()
    torch.save(rnn, buffer)
    buffer.seek(0)
    for other in (copy.deepcopy(rnn), torch.load(buffer, weights_only=False)):
        with torch.no_grad():
            assert torch.equal(other(x)[0], want)


def test_backward_runs_twice_with_retain_graph() -> None:
    rnn = make(dtype=torch.float64)
    x = torch.randn(T, B, H_IN, dtype=torch.float64)
    out = rnn(x)[0].sum()
    out.backward(retain_graph=True)
    first = rnn.param("weight_hh", 0).grad.clone()
    out.backward()
    torch.testing.assert_close(rnn.param("weight_hh", 0).grad, 2 * first)


@pytest.mark.parametrize(
    ("boundary", "grad_through_ops", "top_layer_boundary"),
    list(itertools.product(["step", "soft"], [True, False], [False, True])),
)
def test_training_with_imposed_boundaries_skips_copy_rows_exactly(
    boundary, grad_through_ops, top_layer_boundary, monkeypatch
) -> None:
    """Imposed boundaries (fixed-boundary ablation): COPY rows are left out of the forward and
    backward multiplies; outputs and every gradient equal the dense loop's."""
    monkeypatch.setattr(fused.loop, "SPARSE_MIN_WEIGHT", 0)  # skip at this tiny size too
    rnn = make(
        4,
        dtype=torch.float64,
        boundary=boundary,
        grad_through_ops=grad_through_ops,
        top_layer_boundary=top_layer_boundary,
    )
    g = torch.Generator().manual_seed(1)
    alive = torch.ones(T, B, dtype=torch.float64)
    imposed = torch.zeros(T, B, 4, dtype=torch.float64)
    for l, rate in enumerate((0.4, 0.5, 0.5, 0.5)):  # nested: layers fire less and less
        alive = alive * (torch.rand(T, B, generator=g) < rate).double()
        imposed[:, :, l] = alive
    rnn.skip_copy = False
    want, want_grads = outputs_and_grads(rnn, True, imposed, dtype=torch.float64)
    rnn.skip_copy = True
    got, got_grads = outputs_and_grads(rnn, True, imposed, dtype=torch.float64)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    for name in want_grads:
        torch.testing.assert_close(
            got_grads[name], want_grads[name], rtol=1e-9, atol=1e-11, msg=name
        )
    # the comparison means something only if steps were skipped
    rnn.zero_grad()
    x = torch.randn(T, B, H_IN, dtype=torch.float64)
    spec = fused.LoopSpec.of(rnn, training=True)
    weights = fused.loop_weights(rnn, x.device)
    loop = fused.Loop(
        spec,
        weights.bottom_up(x),
        rnn.zero_state(B, x),
        imposed,
        fused.step_matmuls(weights.step_weights, B),
        weights.biases,
        keep=True,
    )
    with torch.no_grad():  # as inside the autograd Function
        loop.run()
    assert len(loop.worked) > T, "most steps of the upper layers should skip rows"


@pytest.mark.parametrize("layer_norm", [False, True])
def test_weight_gradients_by_chunks_of_steps_equal_the_reference(layer_norm, monkeypatch) -> None:
    """The backward multiplies the weight gradients every few steps (here 5: chunks of 5, 5 and
    2 steps), with and without skipped COPY rows: every gradient as the reference's."""
    monkeypatch.setattr(fused.backward, "WEIGHT_GRAD_ROWS", 5 * B)
    monkeypatch.setattr(fused.backward, "WHOLE_BELOW_BYTES", 0)
    monkeypatch.setattr(fused.loop, "SPARSE_MIN_WEIGHT", 0)
    rnn = make(dtype=torch.float64, layer_norm=layer_norm)
    imposed = torch.randint(0, 2, (T, B, 3)).double()
    for boundaries in (None, imposed):
        got, got_grads = outputs_and_grads(rnn, True, boundaries, dtype=torch.float64)
        want, want_grads = outputs_and_grads(
            rnn, True, boundaries, torch.float64, fn=lambda r, *a: reference_forward(r, *a)
        )
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)
        for name in want_grads:
            torch.testing.assert_close(
                got_grads[name], want_grads[name], rtol=1e-8, atol=1e-9, msg=name
            )
