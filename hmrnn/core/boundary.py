"""The boundary detector: hard sigmoid with a slope and its three variants (model.md §2).

    hard_sigm(x) = max(0, min(1, (a * x + 1) / 2))

- ``step``: z = [hard_sigm(x) > 0.5] = [x > 0]; backward: straight-through, d hard_sigm / dx.
- ``bernoulli``: z ~ Bernoulli(hard_sigm(x)) in training (the step rule at evaluation); the same
  straight-through backward.
- ``soft``: z = hard_sigm(x), never discretised; ordinary autograd.
"""

from __future__ import annotations

import torch
from torch import Tensor

BOUNDARY_VARIANTS = ("step", "bernoulli", "soft")


def hard_sigmoid(x: Tensor, slope: Tensor | float) -> Tensor:
    """``clamp((slope * x + 1) / 2, 0, 1)``; its derivative is ``slope / 2`` where |x| < 1/slope."""
    return torch.clamp((slope * x + 1.0) * 0.5, 0.0, 1.0)


class _StraightThrough(torch.autograd.Function):
    """Forward: a given binary sample. Backward: the hard-sigmoid derivative times the upstream."""

    @staticmethod
    def forward(ctx, x: Tensor, slope: Tensor, z: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, slope)
        return z

    @staticmethod
    def backward(ctx, grad_z: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        x, slope = ctx.saved_tensors
        inside = (slope * x).abs() < 1.0
        return grad_z * inside * (slope * 0.5), None, None


def boundary(x: Tensor, slope: Tensor, variant: str, training: bool) -> Tensor:
    """Boundary z in [0, 1] from the pre-activation ``x`` of the z row.

    Args:
        x: pre-activation s[z], any shape.
        slope: the hard-sigmoid slope ``a`` (a 0-d tensor).
        variant: ``"step"``, ``"bernoulli"`` or ``"soft"``.
        training: ``bernoulli`` samples only in training and uses the step rule otherwise.
    """
    if variant == "soft":
        return hard_sigmoid(x, slope)
    if variant == "bernoulli" and training:
        with torch.no_grad():
            z = torch.bernoulli(hard_sigmoid(x, slope))
    elif variant in ("step", "bernoulli"):
        z = (x > 0).to(x.dtype)
    else:
        raise ValueError(f"boundary must be one of {BOUNDARY_VARIANTS}, got {variant!r}")
    if not x.requires_grad:
        return z
    return _StraightThrough.apply(x, slope.to(x.dtype), z)
