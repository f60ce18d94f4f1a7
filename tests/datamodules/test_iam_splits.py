"""IAM-OnDB splits: the paper's random 90/5/5 split and the official form lists."""

from __future__ import annotations

import numpy as np
import pytest

from datamodules.base import SPLITS, DataError
from datamodules.iam_splits import build_splits


def _fake(lengths: list[int]) -> dict[str, np.ndarray]:
    return {f"f{i:05d}-01": np.zeros((n, 3), np.float32) for i, n in enumerate(lengths)}


def test_random_split_rounding_seed_and_filter() -> None:
    rng = np.random.default_rng(1)
    sequences = _fake([300] * 11_628 + list(rng.integers(1, 300, 567)))
    splits = build_splits(sequences)
    assert {s: len(v) for s, v in splits.items()} == {"train": 10_465, "valid": 581, "test": 582}
    everything = [n for s in SPLITS for n in splits[s]]
    assert len(set(everything)) == 11_628 and all(len(sequences[n]) >= 300 for n in everything)
    assert build_splits(sequences) == splits  # fixed seed
    assert build_splits(dict(reversed(sequences.items()))) == splits  # independent of file order
    assert build_splits(sequences, seed=1) != splits
    with pytest.raises(DataError, match="unknown"):
        build_splits(sequences, mode="nope")


def test_official_split_by_form() -> None:
    sequences = _fake([400, 400, 400, 100, 400, 400])
    names = sorted(sequences)  # f00000-01 ... f00005-01: form = f0000i
    lists = {"trainset": ["f00000"], "testset_t": ["f00001"], "testset_f": ["f00003"]}
    lists["testset_v"] = ["f00004"]
    splits = build_splits(sequences, mode="official", official_lists=lists)
    assert splits["train"] == names[:2]  # f00003 is too short, f00005 is in no list
    assert splits["valid"] == splits["test"] == [names[4]]
    with pytest.raises(DataError, match="form lists"):
        build_splits(sequences, mode="official")
