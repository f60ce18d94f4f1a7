"""Metrics stay exact when ranks hold different numbers of symbols."""

from __future__ import annotations

import math

import torch

from hmrnn.lit.metrics import BitsPerChar, BoundaryStats


def test_bpc_weights_by_symbol_count_across_ranks() -> None:
    # rank 0: 10 symbols at 2.0 nats; rank 1: 30 symbols at 1.0 nats
    rank0, rank1 = BitsPerChar(), BitsPerChar()
    rank0.update(torch.tensor(2.0), 10)
    rank1.update(torch.tensor(1.0), 30)
    rank0.merge_state(rank1)  # what the distributed sum-reduction computes
    true = (10 * 2.0 + 30 * 1.0) / 40 / math.log(2)
    assert abs(rank0.compute().item() - true) < 1e-12
    mean_of_means = (2.0 + 1.0) / 2 / math.log(2)
    assert abs(rank0.compute().item() - mean_of_means) > 0.1


def test_boundary_stats_fractions() -> None:
    stats = BoundaryStats(3)
    z = torch.tensor([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 0]], dtype=torch.float32)[:, None]
    stats.update(z, None)
    out = stats.compute()
    assert out["z_rate_l1"].item() == 0.5 and out["z_rate_l3"].item() == 0.0
    assert out["copy_l1"].item() == 0.0  # layer 1 never copies
    assert out["update_l2"].item() + out["copy_l2"].item() + out["flush_l2"].item() == 1.0
