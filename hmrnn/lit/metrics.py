"""torchmetrics that stay exact under DDP with unequal shards: sums, reduced, then divided."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchmetrics import Metric

from hmrnn.core.analysis import (
    OPERATIONS,
    boundary_counts,
    operation_counts,
    scores_from_counts,
)


class BitsPerChar(Metric):
    """Bits per character: summed negative log-likelihood over all symbols of all ranks / count."""

    full_state_update = False
    higher_is_better = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("nll", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, mean_nll: Tensor, count: int) -> None:
        """``mean_nll`` in nats per symbol over ``count`` symbols."""
        self.nll += mean_nll.detach().to(torch.float64) * count
        self.count += count

    def compute(self) -> Tensor:
        return self.nll / self.count.clamp_min(1) / math.log(2)


class SequenceLogLikelihood(Metric):
    """Average log-likelihood per sequence (nats): summed over every sequence of every rank."""

    full_state_update = False
    higher_is_better = True

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, sequence_ll: Tensor) -> None:
        """sequence_ll (B,): log p of each whole sequence."""
        self.total += sequence_ll.detach().to(torch.float64).sum()
        self.count += sequence_ll.numel()

    def compute(self) -> Tensor:
        return self.total / self.count.clamp_min(1)


class BoundaryStats(Metric):
    """Per-layer boundary rate and UPDATE / COPY / FLUSH fractions, summed over ranks."""

    full_state_update = False

    def __init__(self, num_layers: int) -> None:
        super().__init__()
        self.num_layers = num_layers
        zeros = torch.zeros(num_layers, dtype=torch.float64)
        self.add_state("fired", zeros.clone(), dist_reduce_fx="sum")
        self.add_state("ops", torch.zeros(num_layers, 3, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("steps", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, boundaries: Tensor, z0: Tensor | None, mask: Tensor | None = None) -> None:
        """boundaries (T, B, K); z0 (K, B) the carried z before the first step; mask (T, B)
        True on real steps (padding is not counted)."""
        z = boundaries.detach().to(torch.float64)
        if mask is not None:
            z = z * mask[..., None].to(z.dtype)
        self.fired += z.sum((0, 1))
        self.ops += operation_counts(boundaries, z0, mask).to(self.ops.device)
        self.steps += z.shape[0] * z.shape[1] if mask is None else int(mask.sum())

    def compute(self) -> dict[str, Tensor]:
        """Per layer l: ``z_rate_l{l}``, ``update_l{l}`` / ``copy_l{l}`` / ``flush_l{l}``
        (fractions of steps) and ``seglen_l{l}``, the mean segment length (steps per boundary;
        the number of steps when the layer never fired)."""
        steps = self.steps.clamp_min(1)
        out = {}
        for l in range(self.num_layers):
            out[f"z_rate_l{l + 1}"] = self.fired[l] / steps
            for k, name in enumerate(OPERATIONS):
                out[f"{name}_l{l + 1}"] = self.ops[l, k] / steps
            out[f"seglen_l{l + 1}"] = steps / self.fired[l].clamp_min(1)
        return out


class BoundaryAgreement(Metric):
    """Precision, recall and F1 of each detector layer's boundaries against each kind of true
    boundary, at each tolerance (steps), from counts summed over batches and ranks.

    A tolerance window does not reach across the edge of a batch (one step in 100 at most).
    Keys: ``{kind}_{precision|recall|f1}_l{layer}_tol{k}``; the kinds of a character stream are
    :func:`~hmrnn.core.analysis.truth_kinds` (``word`` and ``word_at_delim``, its delimiter
    convention, ...).
    """

    full_state_update = False

    def __init__(
        self, num_detectors: int, kinds: list[str], tolerances: tuple[int, ...] = (0, 1)
    ) -> None:
        super().__init__()
        self.num_detectors, self.kinds, self.tolerances = num_detectors, list(kinds), tolerances
        shape = (num_detectors, len(self.kinds), len(tolerances), 4)
        self.add_state("counts", torch.zeros(shape, dtype=torch.float64), dist_reduce_fx="sum")

    def update(
        self, boundaries: Tensor, truth: dict[str, Tensor], mask: Tensor | None = None
    ) -> None:
        """boundaries (T, B, K); truth: kind -> (T, B) bool; mask (T, B) True on real steps."""
        z = boundaries.detach()
        for k, kind in enumerate(self.kinds):
            gold = truth[kind].bool()
            if mask is not None:
                gold = gold & mask
            for l in range(self.num_detectors):
                pred = z[..., l] if mask is None else z[..., l] * mask
                for i, tol in enumerate(self.tolerances):
                    counts = boundary_counts(pred, gold, tol)
                    self.counts[l, k, i] += counts.to(self.counts.device)

    def compute(self) -> dict[str, Tensor]:
        out = {}
        for l in range(self.num_detectors):
            for k, kind in enumerate(self.kinds):
                for i, tol in enumerate(self.tolerances):
                    scores = scores_from_counts(self.counts[l, k, i])
                    for name, value in scores.items():
                        key = f"{kind}_{name}_l{l + 1}_tol{tol}"
                        out[key] = torch.tensor(value, dtype=torch.float64)
        return out
