"""Boundary estimators are one object each, found by name in hmrnn.registry.ESTIMATORS.

The toy estimators below exist in this file alone: registering one is all it takes for the
autograd path, the hand-written loop (forward and backward) and the reference to use it.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterator

import pytest
import torch
from torch import Tensor

from hmrnn.core import HMLSTM, HMLSTMState, reference_forward
from hmrnn.core.boundary import (
    BERNOULLI,
    SOFT,
    STEP,
    BoundaryEstimator,
    boundary,
    hard_sigmoid,
)
from hmrnn.registry import ESTIMATORS, UnknownChoice, unknown_choice
from tests.core.test_reference import run_and_grad

H_IN, H, B, T = 4, 5, 6, 7


class Quarter(BoundaryEstimator):
    """z = [hard_sigm(x) > 0.25], with a straight-through gradient of its own: slope / 4 on a
    window twice as wide as the hard sigmoid's ramp."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()

    def sample(self, x: Tensor, slope: Tensor | float, training: bool) -> Tensor:
        self.calls["sample"] += 1
        return (hard_sigmoid(x, slope) > 0.25).to(x.dtype)

    def grad(self, x: Tensor, slope: Tensor | float, z: Tensor, grad_z: Tensor) -> Tensor:
        self.calls["grad"] += 1
        return grad_z * ((x * slope).abs() < 2.0) * (slope * 0.25)


class Logistic(BoundaryEstimator):
    """z = sigmoid(slope x): differentiable, so autograd differentiates ``sample`` itself and the
    hand-written loop must get the same from ``grad`` (which uses z)."""

    differentiable = True

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()

    def sample(self, x: Tensor, slope: Tensor | float, training: bool) -> Tensor:
        self.calls["sample"] += 1
        return torch.sigmoid(x * slope)

    def grad(self, x: Tensor, slope: Tensor | float, z: Tensor, grad_z: Tensor) -> Tensor:
        self.calls["grad"] += 1
        return grad_z * z * (1.0 - z) * slope


@pytest.fixture
def toys() -> Iterator[dict[str, BoundaryEstimator]]:
    """``toy_quarter`` and ``toy_logistic`` registered for one test, unregistered after it."""
    registered = {"toy_quarter": Quarter(), "toy_logistic": Logistic()}
    for name, estimator in registered.items():
        ESTIMATORS.register(name, estimator)
    try:
        yield registered
    finally:
        for name in registered:
            ESTIMATORS.unregister(name)
    assert not set(registered) & set(ESTIMATORS.names())


def make(boundary: str, **kwargs: bool) -> HMLSTM:
    torch.manual_seed(0)
    rnn = HMLSTM(H_IN, H, 3, boundary=boundary, **kwargs).double()
    with torch.no_grad():
        rnn.slope.fill_(1.7)
        for l in range(3):
            rnn.param("bias", l).uniform_(-0.5, 0.5)
    return rnn


def inputs(K: int = 3) -> tuple[Tensor, HMLSTMState]:
    torch.manual_seed(1)
    x = torch.randn(T, B, H_IN, dtype=torch.float64, requires_grad=True)
    state = HMLSTMState(
        torch.randn(K, B, H, dtype=torch.float64, requires_grad=True),
        torch.randn(K, B, H, dtype=torch.float64, requires_grad=True),
        torch.randint(0, 2, (K, B)).double(),
    )
    return x, state


def test_the_built_ins_are_the_registry_entries() -> None:
    assert [ESTIMATORS.get(n) for n in ("step", "bernoulli", "soft")] == [STEP, BERNOULLI, SOFT]
    assert isinstance(make("soft").estimator, type(SOFT))
    with pytest.raises(TypeError, match="abstract"):
        BoundaryEstimator()  # type: ignore[abstract]


@pytest.mark.parametrize(
    ("name", "grad_through_ops", "top_layer_boundary"),
    list(itertools.product(["toy_quarter", "toy_logistic"], [True, False], [False, True])),
)
def test_a_registered_estimator_runs_the_same_on_every_path(
    toys: dict[str, BoundaryEstimator],
    name: str,
    grad_through_ops: bool,
    top_layer_boundary: bool,
) -> None:
    """Autograd, the hand-written loop and the reference: equal outputs and gradients, each
    having asked the toy (the loop's backward included)."""
    toy = toys[name]
    options = {"grad_through_ops": grad_through_ops, "top_layer_boundary": top_layer_boundary}
    rnn = make(name, **options)
    x, state = inputs()
    fast = lambda r, *a: r(*a)  # noqa: E731
    results = {}
    for path in ("fused", "autograd", "reference"):
        rnn.fused = path == "fused"
        toy.calls.clear()
        fn = reference_forward if path == "reference" else fast
        results[path] = run_and_grad(fn, rnn, x, state, None, seed=2)
        assert toy.calls["sample"] >= T * 2, path  # every step of every detector layer
        if path == "fused" or not toy.differentiable:
            assert toy.calls["grad"] >= T * 2, path
        else:  # autograd differentiates a differentiable estimator's sample itself
            assert toy.calls["grad"] == 0, path
    (got, got_grads), bounds = results["fused"], results["fused"][0][4]
    if name == "toy_quarter":  # the toy's rule, not the step rule: fires more often than step
        assert set(bounds.unique().tolist()) == {0.0, 1.0}
        assert bounds.sum() > make("step", **options)(x, state)[2].sum()
    for other in ("autograd", "reference"):
        want, want_grads = results[other]
        assert torch.equal(got[4], want[4]) or name == "toy_logistic", other
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10, msg=other)
        for a, b in zip(got_grads, want_grads, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-8, msg=other)


def test_a_straight_through_toy_gives_its_own_gradient(toys: dict[str, BoundaryEstimator]) -> None:
    """boundary() with the toy's name: its sample forward, its hand-written rule backward."""
    torch.manual_seed(0)
    slope = 1.7
    x = (torch.randn(500, dtype=torch.float64) * 1.5).requires_grad_()
    upstream = torch.randn(500, dtype=torch.float64)
    z = boundary(x, torch.tensor(slope, dtype=torch.float64), "toy_quarter", training=True)
    (z * upstream).sum().backward()
    v = x.detach()
    assert torch.equal(z, (slope * v > -0.5).double())  # hard_sigm(x) > 1/4
    torch.testing.assert_close(x.grad, upstream * torch.where((slope * v).abs() < 2, slope / 4, 0))


@pytest.mark.parametrize("name", ["soft", "toy_logistic"])
def test_a_differentiable_estimators_grad_is_the_derivative_of_its_sample(
    toys: dict[str, BoundaryEstimator], name: str
) -> None:
    """What the hand-written loop uses (grad) equals what autograd takes (d sample / dx), also
    at the ends of soft's ramp, where autograd's clamp still passes the gradient."""
    estimator = ESTIMATORS.get(name)
    slope = torch.tensor(2.0, dtype=torch.float64)
    ends = torch.tensor([-0.5, 0.5], dtype=torch.float64)  # hard_sigm = 0 and 1 at slope 2
    x = torch.cat([torch.linspace(-2, 2, 41, dtype=torch.float64), ends]).requires_grad_()
    upstream = torch.randn(x.numel(), dtype=torch.float64)
    z = estimator.sample(x, slope, True)
    (z * upstream).sum().backward()
    got = estimator.grad(x.detach(), 2.0, z.detach(), upstream)
    torch.testing.assert_close(got, x.grad, rtol=1e-14, atol=0)
    assert torch.equal(got, x.grad) or name != "soft"  # soft: bit for bit, as the loop needs


def test_the_hand_written_backward_passes_gradcheck_with_a_smooth_toy(
    toys: dict[str, BoundaryEstimator],
) -> None:
    """With smooth boundaries the whole HM-LSTM is differentiable: the loop's backward through
    time, with the toy's grad for z, equals finite differences."""
    torch.manual_seed(0)
    rnn = HMLSTM(3, 3, 2, boundary="toy_logistic", top_layer_boundary=True).double()
    x = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    h0, c0 = (torch.randn(2, 2, 3, dtype=torch.float64, requires_grad=True) for _ in range(2))
    z0 = torch.rand(2, 2, dtype=torch.float64, requires_grad=True)
    toys["toy_logistic"].calls.clear()

    def run(x: Tensor, h0: Tensor, c0: Tensor, z0: Tensor) -> tuple[Tensor, ...]:
        output, state, bounds = rnn(x, HMLSTMState(h0, c0, z0))
        return output, *state, bounds

    assert torch.autograd.gradcheck(run, (x, h0, c0, z0))
    assert toys["toy_logistic"].calls["grad"] > 0


def test_an_unknown_name_fails_with_the_registry_message_on_every_path(
    toys: dict[str, BoundaryEstimator],
) -> None:
    message = unknown_choice("model.boundary", "toy_gone", ESTIMATORS.names())
    with pytest.raises(UnknownChoice) as caught:
        HMLSTM(H_IN, H, 3, boundary="toy_gone")
    assert str(caught.value) == message
    with pytest.raises(UnknownChoice, match="not a valid choice"):
        boundary(torch.zeros(3), torch.tensor(1.0), "toy_gone", training=True)

    # a name unregistered after the module was built: no path falls back to another rule
    rnn = make("toy_quarter")
    ESTIMATORS.unregister("toy_quarter")
    message = unknown_choice("model.boundary", "toy_quarter", ESTIMATORS.names())
    x, state = inputs()
    for fused, grad in itertools.product([True, False], [True, False]):
        rnn.fused = fused
        with torch.set_grad_enabled(grad), pytest.raises(UnknownChoice) as caught:
            rnn(x.detach(), HMLSTMState(*(s.detach() for s in state)))
        assert str(caught.value) == message, (fused, grad)
    with pytest.raises(UnknownChoice, match="toy_quarter"):
        reference_forward(rnn, x, state)


def test_the_leaky_straight_through_passes_a_tenth_outside_the_window() -> None:
    """``step_leaky`` (issue 18): the step's z, its gradient inside the window, 0.1 of it
    outside; and the fast loop equals the reference with it (its gradient runs in Python)."""
    estimator = ESTIMATORS.get("step_leaky")
    x = torch.tensor([-3.0, -0.5, 0.5, 3.0])
    z = estimator.sample(x, 1.0, True)
    torch.testing.assert_close(z, STEP.sample(x, 1.0, True))
    g = estimator.grad(x, 1.0, z, torch.ones(4))
    torch.testing.assert_close(g, torch.tensor([0.05, 0.5, 0.5, 0.05]))
    torch.manual_seed(0)
    rnn = HMLSTM(H_IN, H, 3, boundary="step_leaky").double()
    x = torch.randn(T, B, H_IN, dtype=torch.float64, requires_grad=True)
    state = HMLSTMState(
        torch.randn(3, B, H, dtype=torch.float64, requires_grad=True),
        torch.randn(3, B, H, dtype=torch.float64, requires_grad=True),
        torch.randint(0, 2, (3, B)).double(),
    )
    fast = lambda r, *a: r(*a)  # noqa: E731
    got, got_grads = run_and_grad(fast, rnn, x, state, None, seed=1)
    want, want_grads = run_and_grad(reference_forward, rnn, x, state, None, seed=1)
    for a, b in zip([*got, *got_grads], [*want, *want_grads], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-8)
