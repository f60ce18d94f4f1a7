"""Variable-length sequences: the store, padded batches, length buckets shared over ranks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from datamodules.base import DataError
from datamodules.sequences import LengthBatchSampler, SequenceSet, collate_sequences
from datamodules.stream import ResumableLoader


def test_collate_pads_and_masks_and_never_counts_padding() -> None:
    gen = torch.Generator().manual_seed(0)
    items = [torch.randn(n, 3, generator=gen) for n in (3, 6, 2)]
    inputs, targets, mask, lengths = collate_sequences(items)
    assert inputs.shape == targets.shape == (5, 3, 3) and mask.shape == (5, 3)
    assert mask.dtype == torch.bool and lengths.tolist() == [2, 5, 1]
    assert mask.sum(0).tolist() == [2, 5, 1]
    for b, x in enumerate(items):
        n = len(x) - 1
        assert torch.equal(inputs[:n, b], x[:-1]) and torch.equal(targets[:n, b], x[1:])
        assert not inputs[n:, b].any() and not targets[n:, b].any()
    # a per-point score summed under the mask equals the sum over the real targets only
    score = targets.sum(-1) + 100.0 * (~mask)  # padding would add 100 per step
    expected = sum(float(x[1:].sum()) for x in items)
    assert float((score * mask).sum()) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError):
        collate_sequences([torch.zeros(1, 3)])


def test_training_batches_cover_each_sequence_once_sorted_and_reshuffled() -> None:
    lengths = np.random.default_rng(0).integers(2, 500, 1000)
    sampler = LengthBatchSampler(lengths, 16, shuffle=True, seed=3)
    first = list(sampler)
    assert len(first) == len(sampler) == 63  # 62 full batches and one of 8
    assert sorted(i for b in first for i in b) == list(range(1000))
    second = list(sampler)  # the next epoch: another order
    assert first != second
    sampler.set_epoch(0)
    assert list(sampler) == first  # the same epoch gives the same batches
    spread = np.mean([np.ptp(lengths[b]) for b in first])
    assert spread < 0.3 * np.ptp(lengths)  # bucketing: similar lengths together


def test_ranks_share_training_and_evaluation_batches() -> None:
    lengths = np.random.default_rng(1).integers(2, 500, 101)
    whole = LengthBatchSampler(lengths, 8, shuffle=True, seed=2)
    ranks = [
        LengthBatchSampler(lengths, 8, shuffle=True, seed=2, rank=r, world_size=2) for r in (0, 1)
    ]
    per_rank = [list(s) for s in ranks]
    assert len(per_rank[0]) == len(per_rank[1]) == len(ranks[0])  # same number of steps
    for g, batch in enumerate(whole.global_batches(0)):
        assert sorted(per_rank[0][g] + per_rank[1][g]) == sorted(batch.tolist())
    with pytest.raises(DataError, match="divisible"):
        LengthBatchSampler(lengths, 7, shuffle=True, world_size=2)
    evals = [LengthBatchSampler(lengths, 8, shuffle=False, rank=r, world_size=3) for r in range(3)]
    seen = [i for s in evals for b in s for i in b]
    assert sorted(seen) == list(range(101))  # every sequence exactly once, on one rank
    assert all(len(list(s)) == len(s) for s in evals)


def test_sequence_set_round_trip() -> None:
    seqs = [np.full((n, 3), n, np.float32) for n in (2, 4, 3)]
    store = SequenceSet.from_list(["a", "b", "c"], seqs)
    assert len(store) == 3 and store.lengths.tolist() == [2, 4, 3]
    assert all(np.array_equal(store[i], s) for i, s in enumerate(seqs))
    with pytest.raises(IndexError):
        store[3]


def test_training_loader_resumes_mid_epoch_with_the_next_batch() -> None:
    lengths = np.random.default_rng(0).integers(300, 900, size=200)
    data = list(range(200))

    def loader() -> ResumableLoader:
        sampler = LengthBatchSampler(lengths, 16, shuffle=True, seed=3)
        sampler.set_epoch(2)
        return ResumableLoader(data, sampler, collate_fn=lambda items: list(items))

    whole = list(loader())
    first = loader()
    it = iter(first)
    done = [next(it) for _ in range(5)]
    state = first.state_dict()
    assert state == {"consumed": 5} and done == whole[:5]
    resumed = loader()
    resumed.load_state_dict(state)
    assert list(resumed) == whole[5:]
    assert len(resumed) == len(whole)  # Lightning's counters continue from the checkpoint
