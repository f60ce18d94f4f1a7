"""Boundary analysis on tensors: operation counts and agreement with true boundaries."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

OPERATIONS = ("update", "copy", "flush")


def operation_counts(
    boundaries: Tensor, z0: Tensor | None = None, mask: Tensor | None = None
) -> Tensor:
    """How often each layer UPDATEs, COPYs and FLUSHes (model.md §1's table).

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


AT_DELIMITER = "_at_delim"
"""Suffix of a kind's delimiter convention: ``word`` marks the last symbol of each word (the step
a detector that predicts the delimiter can fire at), ``word_at_delim`` the step after it, which
reads the delimiter (where a detector that has seen it, as ``fixed_boundary`` does, fires)."""


def truth_kinds(rules: Mapping[str, tuple[Sequence[int], Sequence[int]]]) -> list[str]:
    """The kinds of true boundary scored for the rules ``kind -> (before, at)``: each kind in the
    end convention and, when it has a ``before`` rule, ``{kind}_at_delim`` after it. A kind with
    only an ``at`` rule (a unit ending on its own symbol: '.', end of line, pen-up) has one
    convention: its last symbol is the step that reads it."""
    kinds = []
    for kind, (before, _) in rules.items():
        kinds += [kind, kind + AT_DELIMITER] if len(before) else [kind]
    return kinds


def _isin(x: Tensor, ids: Sequence[int]) -> Tensor:
    return torch.isin(x, torch.tensor(list(ids), dtype=x.dtype, device=x.device))


def mark_boundaries(
    inputs: Tensor,
    next_inputs: Tensor,
    before: Sequence[int],
    at: Sequence[int],
    delimiters: Sequence[int],
) -> Tensor:
    """True boundaries of one kind from the symbols themselves (the data modules' truth rules),
    in the end convention.

    t is a boundary when x_t is not a delimiter and x_{t+1} is in ``before`` (t holds the last
    symbol of a unit), or when x_t is in ``at``. Shape: inputs, next_inputs (T, B) ids -> (T, B).
    """
    return _isin(inputs, at) | (~_isin(inputs, delimiters) & _isin(next_inputs, before))


def mark_boundaries_at_delimiter(
    inputs: Tensor,
    before: Sequence[int],
    at: Sequence[int],
    delimiters: Sequence[int],
    previous: Tensor | None = None,
) -> Tensor:
    """The same boundaries in the delimiter convention: those of the ``before`` rule one step
    later, on the step that reads the delimiter.

    t is a boundary when x_t is in ``before`` and x_{t-1} is not a delimiter, or when x_t is in
    ``at``. ``previous`` (B,) holds x_{-1}, the input before the first step (the last input of
    the batch before, whose state was carried); None: unknown, taken as no delimiter, so a
    delimiter read first closes a unit. Shape: inputs (T, B) ids -> (T, B).
    """
    after_delimiter = torch.zeros_like(inputs, dtype=torch.bool)  # x_{t-1} is a delimiter
    after_delimiter[1:] = _isin(inputs[:-1], delimiters)
    if previous is not None and len(inputs):
        after_delimiter[0] = _isin(previous.to(inputs.device), delimiters)
    return _isin(inputs, at) | (_isin(inputs, before) & ~after_delimiter)


def true_boundaries(
    inputs: Tensor,
    next_inputs: Tensor,
    rules: Mapping[str, tuple[Sequence[int], Sequence[int]]],
    delimiters: Sequence[int],
    previous: Tensor | None = None,
) -> dict[str, Tensor]:
    """Every kind of :func:`truth_kinds` of a batch: (T, B) bool each.

    Args:
        inputs: (T, B) x_t; next_inputs: (T, B) x_{t+1} (the targets).
        rules: kind -> (before, at) ids (``CharStreamDataModule.truth_rules``).
        delimiters: the ids that separate units.
        previous: (B,) x_{-1}, see :func:`mark_boundaries_at_delimiter`.
    """
    out = {}
    for kind, (before, at) in rules.items():
        out[kind] = mark_boundaries(inputs, next_inputs, before, at, delimiters)
        if len(before):
            out[kind + AT_DELIMITER] = mark_boundaries_at_delimiter(
                inputs, before, at, delimiters, previous
            )
    return out


def boundary_counts(predicted: Tensor, true: Tensor, tolerance: int = 0) -> Tensor:
    """The counts behind precision and recall, along dim 0 (time) of each column.

    Shape: predicted, true (N,) or (T, B): bool, 0/1 or, for ``predicted``, values in [0, 1]
    read as boundaries above 0.5. Returns float64 (4,): predicted boundaries within
    ``tolerance`` steps of a true one, predicted boundaries, true boundaries within
    ``tolerance`` of a predicted one, true boundaries.
    """
    if predicted.shape != true.shape:
        raise ValueError(f"predicted {tuple(predicted.shape)} and true {tuple(true.shape)} differ")
    pred = predicted.detach().float() > 0.5
    gold = true.bool()
    if pred.dim() == 1:
        pred, gold = pred[:, None], gold[:, None]

    def dilate(x: Tensor) -> Tensor:  # (T, B): True within `tolerance` steps of a True
        if tolerance == 0:
            return x
        kernel = torch.ones(1, 1, 2 * tolerance + 1, device=x.device)
        spread = torch.nn.functional.conv1d(x.t().float()[:, None], kernel, padding=tolerance)
        return spread[:, 0].t() > 0

    return torch.tensor(
        [
            int((pred & dilate(gold)).sum()),
            int(pred.sum()),
            int((gold & dilate(pred)).sum()),
            int(gold.sum()),
        ],
        dtype=torch.float64,
    )


def scores_from_counts(counts: Tensor) -> dict[str, float]:
    """Precision, recall and F1 from :func:`boundary_counts` (0 where undefined)."""
    hits_p, n_pred, hits_r, n_gold = (float(x) for x in counts)
    precision = hits_p / n_pred if n_pred else 0.0
    recall = hits_r / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def boundary_scores(predicted: Tensor, true: Tensor, tolerance: int = 0) -> dict[str, float]:
    """Precision, recall and F1 of predicted boundaries against true ones along one stream.

    A predicted boundary at t is correct if a true boundary lies within ``tolerance`` steps of
    it; each true boundary is recalled if a predicted one lies within ``tolerance`` steps.

    Shape: predicted and true are (N,) tensors over the same positions: boolean, 0/1, or for
    ``predicted`` boundary values in [0, 1], read as boundaries where above 0.5 (soft
    boundaries as the step rule would discretise them). Also returns ``rate``, the fraction of
    positions predicted as boundaries.
    """
    counts = boundary_counts(predicted.flatten(), true.flatten(), tolerance)
    return scores_from_counts(counts) | {"rate": float(counts[1]) / max(predicted.numel(), 1)}
