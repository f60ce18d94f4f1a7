"""Contiguous per-rank shards, segments and the vocabulary."""

from __future__ import annotations

import numpy as np
import pytest

from datamodules.stream import DataError, StreamSegments, Vocabulary


def test_rows_are_contiguous_pieces_of_the_stream_and_segments_overlap_by_one() -> None:
    tokens = np.arange(103)
    seg = StreamSegments(tokens, rows=4, bptt=7)  # rows of 25, 3 tokens dropped
    assert seg.row_length == 25 and len(seg) == 4  # 24 input positions in steps of 7
    first, last = seg[0].numpy(), seg[3].numpy()
    assert first.shape == (8, 4) and last.shape == (4, 4)  # inputs 21..23 and their targets
    assert np.array_equal(first[:, 1], np.arange(25, 33))
    assert seg[1].numpy()[0, 0] == first[-1, 0]  # each segment starts at the last target
    assert np.array_equal(seg.positions(0)[:, 2], np.arange(50, 57))
    with pytest.raises(IndexError):
        seg[4]


def test_two_ranks_hold_the_rows_one_process_holds() -> None:
    tokens = np.arange(1000)
    whole = StreamSegments(tokens, rows=8, bptt=10)
    parts = [StreamSegments(tokens, rows=8, bptt=10, rank=r, world_size=2) for r in (0, 1)]
    for i in range(len(whole)):
        joined = np.concatenate([p[i].numpy() for p in parts], axis=1)
        assert np.array_equal(joined, whole[i].numpy())
        assert np.array_equal(
            np.concatenate([p.positions(i) for p in parts], 1), whole.positions(i)
        )


def test_uneven_split_over_ranks_and_too_short_streams_are_errors() -> None:
    with pytest.raises(DataError, match=r"data.batch_size=6 must be divisible"):
        StreamSegments(np.arange(100), rows=6, bptt=5, world_size=4)
    with pytest.raises(DataError, match="too short"):
        StreamSegments(np.arange(10), rows=8, bptt=5)


def test_vocabulary_round_trip() -> None:
    vocab = Vocabulary.from_text("hello world")
    ids = vocab.encode("hello")
    assert ids.dtype == np.uint8 and vocab.decode(ids) == "hello"
    assert Vocabulary.from_json(vocab.to_json()) == vocab
    with pytest.raises(DataError, match="'z' is not in the vocabulary"):
        vocab.encode("z")
