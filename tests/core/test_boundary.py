"""The boundary detector: forward rules and the straight-through gradient (model.md §2)."""

import pytest
import torch

from hmrnn.core.boundary import boundary, hard_sigmoid
from hmrnn.registry import UnknownChoice


def test_hard_sigmoid_values() -> None:
    x = torch.tensor([-3.0, -1.0, -0.5, 0.0, 0.5, 1.0, 3.0])
    assert torch.equal(hard_sigmoid(x, 1.0), torch.tensor([0, 0, 0.25, 0.5, 0.75, 1, 1]))
    assert torch.equal(hard_sigmoid(x, 2.0), torch.tensor([0, 0, 0, 0.5, 1, 1, 1]))


@pytest.mark.parametrize("slope", [1.0, 2.5, 5.0])
@pytest.mark.parametrize("variant", ["step", "bernoulli"])
def test_straight_through_gradient_is_hard_sigmoid_derivative(slope: float, variant: str) -> None:
    torch.manual_seed(0)
    x = (torch.randn(1000) * 1.5).requires_grad_()
    upstream = torch.randn(1000)
    z = boundary(x, torch.tensor(slope), variant, training=True)
    (z * upstream).sum().backward()
    derivative = torch.where((slope * x.detach()).abs() < 1, slope / 2, 0.0)
    torch.testing.assert_close(x.grad, derivative * upstream)
    # the hard-sigmoid's own autograd derivative agrees (away from the kinks)
    x2 = x.detach().clone().requires_grad_()
    hard_sigmoid(x2, slope).backward(upstream)
    torch.testing.assert_close(x.grad, x2.grad)


def test_step_is_threshold_at_zero_for_every_slope() -> None:
    x = torch.tensor([-0.3, -1e-6, 0.0, 1e-6, 0.3])
    for slope in (1.0, 3.0, 5.0):
        z = boundary(x, torch.tensor(slope), "step", training=True)
        assert torch.equal(z, torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0]))


def test_bernoulli_samples_in_training_and_steps_in_evaluation() -> None:
    torch.manual_seed(0)
    x = torch.full((20000,), 0.4)  # hard_sigm(0.4) = 0.7 at slope 1
    z = boundary(x, torch.tensor(1.0), "bernoulli", training=True)
    assert set(z.unique().tolist()) == {0.0, 1.0}
    assert abs(z.mean().item() - 0.7) < 0.02
    assert torch.equal(
        boundary(x, torch.tensor(1.0), "bernoulli", training=False), torch.ones(20000)
    )


def test_soft_is_the_hard_sigmoid_and_passes_gradcheck() -> None:
    x = torch.linspace(-2, 2, 37, dtype=torch.float64)
    torch.testing.assert_close(boundary(x, torch.tensor(2.0), "soft", True), hard_sigmoid(x, 2.0))
    x = (torch.rand(20, dtype=torch.float64) * 1.6 - 0.8).requires_grad_()  # inside the ramp
    slope = torch.tensor(1.0, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda v: boundary(v, slope, "soft", True), (x,))


def test_unknown_variant_is_rejected() -> None:
    with pytest.raises(UnknownChoice, match=r"model.boundary='gumbel' is not a valid choice"):
        boundary(torch.zeros(3), torch.tensor(1.0), "gumbel", training=True)
