"""The boundary detector: hard sigmoid with a slope and its estimators (model.md §2).

    hard_sigm(x) = max(0, min(1, (a * x + 1) / 2))

An estimator turns the z row's pre-activation into the boundary z and says how the gradient of z
reaches that pre-activation. The built-ins, registered in :data:`hmrnn.registry.ESTIMATORS`:

- ``step`` (:data:`STEP`): z = [hard_sigm(x) > 0.5] = [x > 0]; backward: straight-through,
  d hard_sigm / dx.
- ``bernoulli`` (:data:`BERNOULLI`): z ~ Bernoulli(hard_sigm(x)) in training (the step rule at
  evaluation); the same straight-through backward.
- ``soft`` (:data:`SOFT`): z = hard_sigm(x), never discretised; ordinary autograd.

Every path of :class:`hmrnn.core.HMLSTM` (autograd, the hand-written loop of
:mod:`hmrnn.core.fused`, the reference) calls the same estimator object, so a new one is one
subclass registered under a name (``ESTIMATORS.register("mine", Mine())``).
"""

from __future__ import annotations

import abc

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx

from hmrnn.registry import ESTIMATORS


def hard_sigmoid(x: Tensor, slope: Tensor | float) -> Tensor:
    """``clamp((slope * x + 1) / 2, 0, 1)``; its derivative is ``slope / 2`` where |x| < 1/slope."""
    return torch.clamp((slope * x + 1.0) * 0.5, 0.0, 1.0)


class BoundaryEstimator(abc.ABC):
    """How z is computed from the z row's pre-activation x, forward and backward.

    ``slope`` is a Python float in the hand-written loop and a 0-d tensor of x's dtype (or the
    module's ``slope`` buffer) on the autograd paths; arithmetic with either rounds in x's dtype,
    so a rule written once gives both paths the same numbers.
    """

    differentiable: bool = False
    """True when :meth:`sample` is made of differentiable torch operations (``soft``): the
    autograd paths then differentiate it themselves, and :meth:`grad` must equal that derivative
    (the hand-written loop uses :meth:`grad`). False: :meth:`grad` is the gradient, whatever z is
    (a straight-through estimator)."""

    @abc.abstractmethod
    def sample(self, x: Tensor, slope: Tensor | float, training: bool) -> Tensor:
        """z (the shape of x, in [0, 1]) from the pre-activation x; called without a graph except
        for a ``differentiable`` estimator on the autograd paths."""

    @abc.abstractmethod
    def grad(self, x: Tensor, slope: Tensor | float, z: Tensor, grad_z: Tensor) -> Tensor:
        """d loss / d x from d loss / d z (``grad_z``), for the z that :meth:`sample` gave."""

    def is_random(self, training: bool) -> bool:
        """Whether :meth:`sample` draws from torch's random generator (in this mode).

        The hand-written loop then computes every row's z in one call, as the autograd path
        does, so that both take the same draws: it skips no COPY rows.
        """
        return False


class StepEstimator(BoundaryEstimator):
    """``step``: z = [x > 0]; the straight-through gradient d hard_sigm / dx."""

    def sample(self, x: Tensor, slope: Tensor | float, training: bool) -> Tensor:
        return (x > 0).to(x.dtype)

    def grad(self, x: Tensor, slope: Tensor | float, z: Tensor, grad_z: Tensor) -> Tensor:
        inside = (x * slope).abs() < 1.0
        return grad_z * inside * (slope * 0.5)


class LeakyStepEstimator(StepEstimator):
    """``step_leaky`` (not in the paper; issue 18): z = [x > 0] as ``step``, and the
    straight-through gradient d hard_sigm / dx inside the window |slope x| < 1, ``leak`` times it
    outside. The paper's estimator passes nothing outside the window, so a detector whose
    pre-activation leaves it never learns again (docs/hierarchy.md); the leak lets it come back.
    """

    leak = 0.1

    def grad(self, x: Tensor, slope: Tensor | float, z: Tensor, grad_z: Tensor) -> Tensor:
        inside = (x * slope).abs() < 1.0
        scale = torch.where(inside, 1.0, self.leak).to(grad_z.dtype)
        return grad_z * scale * (slope * 0.5)


class BernoulliEstimator(StepEstimator):
    """``bernoulli``: z ~ Bernoulli(hard_sigm(x)) in training, [x > 0] in evaluation; the
    straight-through gradient of ``step``."""

    def sample(self, x: Tensor, slope: Tensor | float, training: bool) -> Tensor:
        if training:
            return torch.bernoulli(hard_sigmoid(x, slope))
        return super().sample(x, slope, training)

    def is_random(self, training: bool) -> bool:
        return training


class SoftEstimator(BoundaryEstimator):
    """``soft``: z = hard_sigm(x), differentiated as it is."""

    differentiable = True

    def sample(self, x: Tensor, slope: Tensor | float, training: bool) -> Tensor:
        return hard_sigmoid(x, slope)

    def grad(self, x: Tensor, slope: Tensor | float, z: Tensor, grad_z: Tensor) -> Tensor:
        # autograd's clamp passes the gradient at the ends of the ramp too (y = 0 or 1)
        y = (x * slope + 1.0) * 0.5
        inside = (y >= 0.0) & (y <= 1.0)
        return grad_z * inside * (slope * 0.5)


STEP = StepEstimator()
STEP_LEAKY = LeakyStepEstimator()
BERNOULLI = BernoulliEstimator()
SOFT = SoftEstimator()


class _Estimated(torch.autograd.Function):
    """Forward: a given sample z. Backward: the estimator's gradient times the upstream."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: FunctionCtx, x: Tensor, slope: Tensor, z: Tensor, estimator: BoundaryEstimator
    ) -> Tensor:
        ctx.save_for_backward(x, slope, z)
        ctx.estimator = estimator
        return z

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: FunctionCtx, grad_z: Tensor
    ) -> tuple[Tensor, None, None, None]:
        x, slope, z = ctx.saved_tensors
        return ctx.estimator.grad(x, slope, z, grad_z), None, None, None


def boundary(
    x: Tensor, slope: Tensor, estimator: BoundaryEstimator | str, training: bool
) -> Tensor:
    """Boundary z in [0, 1] from the pre-activation ``x`` of the z row, with its gradient.

    Args:
        x: pre-activation s[z], any shape.
        slope: the hard-sigmoid slope ``a`` (a 0-d tensor).
        estimator: a :class:`BoundaryEstimator`, or its name in
            :data:`hmrnn.registry.ESTIMATORS` (``"step"``, ``"bernoulli"``, ``"soft"``, ...);
            an unknown name raises :class:`hmrnn.registry.UnknownChoice` (a ValueError).
        training: e.g. ``bernoulli`` samples only in training and uses the step rule otherwise.
    """
    if isinstance(estimator, str):
        estimator = ESTIMATORS.get(estimator)
    if estimator.differentiable:
        return estimator.sample(x, slope, training)
    with torch.no_grad():
        z = estimator.sample(x, slope, training)
    if not x.requires_grad:
        return z
    return _Estimated.apply(x, slope.to(x.dtype), z, estimator)
