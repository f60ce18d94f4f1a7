"""The fast path equals the plain reference implementation, outputs and gradients, with and
without the C++ cell."""

from __future__ import annotations

import itertools

import pytest
import torch

from hmrnn.core import HMLSTM, HMLSTMState, reference_forward

H_IN, H, B, T = 5, 6, 3, 8

VARIANTS = list(
    itertools.product(
        ["step", "bernoulli", "soft"],  # boundary
        [False, True],  # layer_norm
        [False, True],  # top_layer_boundary
        [False, True],  # grad_through_ops
    )
)


def run_and_grad(fn, rnn: HMLSTM, x, state, boundaries, seed: int):
    """Outputs of fn and gradients of a loss that touches every output."""
    for p in [*rnn.parameters(), x, state.h, state.c]:
        p.grad = None
    torch.manual_seed(seed)  # the same Bernoulli draws for both implementations
    out, last, bounds = fn(rnn, x, state, boundaries)
    loss = (out * torch.linspace(-1, 1, out.numel()).view_as(out).double()).sum()
    loss = loss + last.c.pow(2).sum() + last.h.sum() + (bounds * 0.3).sum()
    loss.backward()
    grads = [p.grad for p in rnn.parameters()] + [x.grad, state.h.grad, state.c.grad]
    return (out.detach(), *[s.detach() for s in last], bounds.detach()), grads


@pytest.mark.parametrize(
    ("boundary", "layer_norm", "top_layer_boundary", "grad_through_ops"), VARIANTS
)
@pytest.mark.parametrize("num_layers", [1, 2, 3])
@pytest.mark.parametrize("native", [True, False], ids=["native", "torch_ops"])
def test_fast_path_equals_reference(
    boundary, layer_norm, top_layer_boundary, grad_through_ops, num_layers, native
) -> None:
    """The hand-written loop, with its per-step work in the C++ cell (where it builds) and in
    torch operations (its fallback)."""
    torch.manual_seed(0)
    rnn = HMLSTM(
        H_IN,
        H,
        num_layers,
        layer_norm=layer_norm,
        boundary=boundary,
        top_layer_boundary=top_layer_boundary,
        grad_through_ops=grad_through_ops,
    )
    rnn = rnn.double()
    rnn.native = native
    with torch.no_grad():
        rnn.slope.fill_(1.7)
        for l in range(num_layers):
            rnn.param("bias", l).uniform_(-0.5, 0.5)
    x = torch.randn(T, B, H_IN).double().requires_grad_()
    z0 = torch.randint(0, 2, (num_layers, B)).double()
    state = HMLSTMState(
        torch.randn(num_layers, B, H).double().requires_grad_(),
        torch.randn(num_layers, B, H).double().requires_grad_(),
        z0,
    )
    fast = lambda r, *a: r(*a)  # noqa: E731
    for boundaries in (None, torch.randint(0, 2, (T, B, num_layers)).double()):
        got, got_grads = run_and_grad(fast, rnn, x, state, boundaries, seed=1)
        want, want_grads = run_and_grad(reference_forward, rnn, x, state, boundaries, seed=1)
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)
        for a, b in zip(got_grads, want_grads, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-8)


def test_reference_agrees_in_batch_first_mode() -> None:
    torch.manual_seed(0)
    rnn = HMLSTM(H_IN, H, 3, batch_first=True).double()
    x = torch.randn(B, T, H_IN).double()
    for a, b in zip(rnn(x), reference_forward(rnn, x), strict=True):
        for u, v in zip(
            a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,), strict=True
        ):
            torch.testing.assert_close(u, v, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize(
    ("boundary", "layer_norm", "top_layer_boundary", "grad_through_ops"), VARIANTS
)
@pytest.mark.parametrize("native", [True, False], ids=["native", "torch_ops"])
def test_detector_input_grad_off_equals_the_reference(
    boundary, layer_norm, top_layer_boundary, grad_through_ops, native
) -> None:
    """``detector_input_grad=False``: the z rows' projections read their inputs detached (the
    gates that multiply them still pass gradients). Same outputs as with it on; the inputs'
    gradients differ, and the fused loop and the autograd path equal the reference."""
    torch.manual_seed(0)
    options = dict(
        layer_norm=layer_norm,
        boundary=boundary,
        top_layer_boundary=top_layer_boundary,
        grad_through_ops=grad_through_ops,
    )
    on = HMLSTM(H_IN, H, 3, **options).double()
    off = HMLSTM(H_IN, H, 3, detector_input_grad=False, **options).double()
    with torch.no_grad():
        on.slope.fill_(1.7)
        for l in range(3):
            on.param("bias", l).uniform_(-0.5, 0.5)
            on.param("bias", l)[4 * H :] = 0.05  # detectors inside the window
    off.load_state_dict(on.state_dict())
    x = torch.randn(T, B, H_IN).double().requires_grad_()
    state = HMLSTMState(
        torch.randn(3, B, H).double().requires_grad_(),
        torch.randn(3, B, H).double().requires_grad_(),
        torch.randint(0, 2, (3, B)).double(),
    )
    fast = lambda r, *a: r(*a)  # noqa: E731
    off.native = native
    got, got_grads = run_and_grad(fast, off, x, state, None, seed=1)
    want, want_grads = run_and_grad(reference_forward, off, x, state, None, seed=1)
    off.fused = False
    autograd, autograd_grads = run_and_grad(fast, off, x, state, None, seed=1)
    paper, paper_grads = run_and_grad(reference_forward, on, x, state, None, seed=1)
    for a, b, c, d in zip(got, want, autograd, paper, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)
        torch.testing.assert_close(c, b, rtol=1e-9, atol=1e-10)
        torch.testing.assert_close(d, b, rtol=1e-9, atol=1e-10)
    for a, b, c in zip(got_grads, want_grads, autograd_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-8)
        torch.testing.assert_close(c, b, rtol=1e-8, atol=1e-8)
    assert not torch.allclose(want_grads[-3], paper_grads[-3])  # d loss / d x changed
    assert "detector_input_grad=False" in repr(off)
