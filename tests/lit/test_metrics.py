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


def test_segment_length_is_steps_per_boundary() -> None:
    stats = BoundaryStats(3)
    z = torch.tensor([[1, 0, 0], [0, 0, 0], [0, 0, 0], [1, 1, 0]], dtype=torch.float32)[:, None]
    stats.update(z.expand(4, 2, 3), None)  # two rows: 8 steps
    out = stats.compute()
    assert out["seglen_l1"].item() == 2.0 and out["seglen_l2"].item() == 4.0
    assert out["seglen_l3"].item() == 8.0  # never fired: the whole stretch is one segment


def test_boundary_agreement_by_hand_with_tolerance_and_ranks() -> None:
    from hmrnn.lit.metrics import BoundaryAgreement

    # one row, 10 steps; true word ends at 2, 5, 9; layer 1 fires at 2, 3; layer 2 at 6
    true = torch.zeros(10, 1, dtype=torch.bool)
    true[[2, 5, 9]] = True
    z = torch.zeros(10, 1, 3)
    z[[2, 3], 0, 0] = 1
    z[6, 0, 1] = 1
    half_a, half_b = BoundaryAgreement(2, ["word"]), BoundaryAgreement(2, ["word"])
    half_a.update(z[:5], {"word": true[:5]})  # as two batches on two ranks
    half_b.update(z[5:], {"word": true[5:]})
    half_a.merge_state(half_b)
    out = {k: v.item() for k, v in half_a.compute().items()}
    assert out["word_precision_l1_tol0"] == 0.5 and out["word_recall_l1_tol0"] == 1 / 3
    assert abs(out["word_f1_l1_tol0"] - 0.4) < 1e-12
    assert out["word_precision_l1_tol1"] == 1.0  # 3 is within one step of 2
    assert out["word_precision_l2_tol0"] == 0.0 and out["word_f1_l2_tol0"] == 0.0
    assert out["word_precision_l2_tol1"] == 1.0 and out["word_recall_l2_tol1"] == 1 / 3
    masked = BoundaryAgreement(1, ["word"])
    mask = torch.ones(10, 1, dtype=torch.bool)
    mask[5:] = False  # padding: neither predictions nor truths there count
    masked.update(z, {"word": true}, mask)
    assert masked.compute()["word_recall_l1_tol0"].item() == 1.0


def test_boundary_agreement_scores_both_conventions_of_a_word() -> None:
    from hmrnn.core.analysis import true_boundaries, truth_kinds
    from hmrnn.lit.metrics import BoundaryAgreement

    # ids: 0 = space, 1 = '.', 2.. letters: "ab cd.e f.gh i" as two batches of one row
    text = torch.tensor([2, 3, 0, 4, 5, 1, 6, 0, 7, 1, 8, 9, 0, 2, 3])[:, None]
    rules, delimiters = {"word": ([0, 1], [1]), "phrase": ([], [1])}, [0, 1]
    kinds = truth_kinds(rules)
    assert kinds == ["word", "word_at_delim", "phrase"]
    # layer 1 fires on each delimiter read (fixed_boundary), layer 2 on each word's last letter
    metric = BoundaryAgreement(2, kinds)
    previous = None
    for batch in (text[:8], text[7:]):  # the second starts on the space after "e"
        inputs, targets = batch[:-1], batch[1:]
        truth = true_boundaries(inputs, targets, rules, delimiters, previous)
        z = torch.stack([torch.isin(inputs, torch.tensor(delimiters)), truth["word"]], -1)
        metric.update(z.float(), truth)
        previous = inputs[-1]
    out = {k: v.item() for k, v in metric.compute().items()}
    assert set(out) == {
        f"{kind}_{name}_l{l}_tol{tol}"
        for kind in kinds
        for name in ("precision", "recall", "f1")
        for l in (1, 2)
        for tol in (0, 1)
    }
    assert out["word_at_delim_f1_l1_tol0"] == 1.0 and out["word_f1_l1_tol0"] < 0.5
    assert out["word_f1_l1_tol1"] == 1.0  # one step late: within a tolerance of 1
    assert out["word_f1_l2_tol0"] == 1.0 and out["word_at_delim_f1_l2_tol0"] < 0.5
    assert out["phrase_recall_l1_tol0"] == 1.0  # a '.' ends a phrase on itself: one convention
