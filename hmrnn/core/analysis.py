"""Boundary analysis on tensors: operation counts and agreement with true boundaries."""

from __future__ import annotations

import torch
from torch import Tensor

OPERATIONS = ("update", "copy", "flush")


def operation_counts(
    boundaries: Tensor, z0: Tensor | None = None, mask: Tensor | None = None
) -> Tensor:
    """How often each layer UPDATEs, COPYs and FLUSHes (SPEC section 1's table).

    Args:
        boundaries: (T, B, K) the z_t^l a model used (binary; soft values count fractionally).
        z0: (K, B) the boundaries before the first step (the carried state's z); None = zeros.
        mask: (T, B) True where a step is real (padded batches); None = every step.

    Returns:
        (K, 3) float64 counts of UPDATE, COPY, FLUSH per layer, summed over T and B. Layer 1 reads
        z^0 = 1, so it never COPYs; a layer without a detector has z = 0 and never FLUSHes.
    """
    _, B, K = boundaries.shape
    z = boundaries.detach().to(torch.float64)
    start = torch.zeros(1, B, K, dtype=z.dtype, device=z.device)
    if z0 is not None:
        start = z0.detach().t().to(z.dtype).unsqueeze(0)
    z_prev = torch.cat([start, z[:-1]], dim=0)  # z_{t-1}^l
    z_below = torch.cat([torch.ones_like(z[..., :1]), z[..., :-1]], dim=2)  # z_t^{l-1}
    flush = z_prev
    update = (1 - z_prev) * z_below
    copy = (1 - z_prev) * (1 - z_below)
    ops = torch.stack([update, copy, flush], dim=-1)  # (T, B, K, 3)
    if mask is not None:
        ops = ops * mask[..., None, None].to(ops.dtype)
    return ops.sum((0, 1))


def boundary_scores(predicted: Tensor, true: Tensor, tolerance: int = 0) -> dict[str, float]:
    """Precision, recall and F1 of predicted boundaries against true ones along one stream.

    A predicted boundary at t is correct if a true boundary lies within ``tolerance`` steps of
    it; each true boundary is recalled if a predicted one lies within ``tolerance`` steps.

    Shape: predicted and true are (N,) tensors over the same positions: boolean, 0/1, or for
    ``predicted`` boundary values in [0, 1], read as boundaries where above 0.5 (soft
    boundaries as the step rule would discretise them).
    """
    pred = (predicted.float() > 0.5).flatten()
    gold = true.bool().flatten()
    if pred.shape != gold.shape:
        raise ValueError(f"predicted {tuple(pred.shape)} and true {tuple(gold.shape)} differ")

    def dilate(x: Tensor) -> Tensor:
        if tolerance == 0:
            return x
        kernel = torch.ones(1, 1, 2 * tolerance + 1)
        spread = torch.nn.functional.conv1d(x.float()[None, None], kernel, padding=tolerance)
        return spread[0, 0] > 0

    n_pred, n_gold = int(pred.sum()), int(gold.sum())
    hits_p = int((pred & dilate(gold)).sum())
    hits_r = int((gold & dilate(pred)).sum())
    precision = hits_p / n_pred if n_pred else 0.0
    recall = hits_r / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "rate": n_pred / max(len(pred), 1)}
