"""Operation counts and boundary precision / recall / F1 on hand-made sequences."""

from __future__ import annotations

import torch

from hmrnn.core.analysis import boundary_scores, operation_counts


def test_operation_counts_follow_the_table() -> None:
    # one row, K = 3, four steps; columns are z^1, z^2, z^3 (z^3 = 0: no detector)
    z = torch.tensor([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 0]], dtype=torch.float32)[:, None]
    counts = operation_counts(z)  # z0 = zeros
    # layer 1 never copies: t0 update, t1 flush (z^1_0 = 1), t2 update, t3 flush
    assert counts[0].tolist() == [2, 0, 2]
    # layer 2: t0 update (z^1_0 = 1), t1 copy, t2 flush (z^2_1 = 1), t3 flush (z^2_2 = 1)
    assert counts[1].tolist() == [1, 1, 2]
    # layer 3: t0 copy, t1 update (z^2_1 = 1), t2 update, t3 copy
    assert counts[2].tolist() == [2, 2, 0]
    z0 = torch.tensor([[0.0], [1.0], [0.0]])  # layer 2 fired just before the first step
    assert operation_counts(z, z0)[1].tolist() == [0, 1, 3]


def test_boundary_scores_with_and_without_tolerance() -> None:
    true = torch.tensor([0, 0, 1, 0, 0, 1, 0, 0, 0, 1], dtype=torch.bool)
    pred = torch.tensor([0, 0, 1, 1, 0, 0, 0, 0, 0, 0], dtype=torch.bool)
    s0 = boundary_scores(pred, true, 0)
    assert (s0["precision"], s0["recall"]) == (0.5, 1 / 3)
    assert abs(s0["f1"] - 0.4) < 1e-12 and s0["rate"] == 0.2
    s1 = boundary_scores(pred, true, 1)  # t=3 is within one step of t=2 (not of t=5)
    assert (s1["precision"], s1["recall"]) == (1.0, 1 / 3)
    none = boundary_scores(torch.zeros(10, dtype=torch.bool), true)
    assert none == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "rate": 0.0}


def test_soft_boundaries_count_where_above_one_half() -> None:
    soft = torch.tensor([0.1, 0.9, 0.4, 0.6, 0.0])
    true = torch.tensor([0, 1, 1, 0, 0])
    scores = boundary_scores(soft, true)
    assert scores["precision"] == 0.5 and scores["recall"] == 0.5


def test_true_boundaries_from_symbols_by_rule() -> None:
    from hmrnn.core.analysis import mark_boundaries

    # ids: 0 = space, 1 = '.', others letters; "ab c." then "d"
    text = torch.tensor([2, 3, 0, 4, 1, 5])
    inputs, nxt = text[:-1, None], text[1:, None]
    word = mark_boundaries(inputs, nxt, before=[0, 1], at=[1], delimiters=[0, 1])
    assert word[:, 0].tolist() == [False, True, False, True, True]  # b, c and the '.'
    phrase = mark_boundaries(inputs, nxt, before=[], at=[1], delimiters=[0, 1])
    assert phrase[:, 0].tolist() == [False, False, False, False, True]


def test_boundary_counts_work_per_column_of_a_batch() -> None:
    from hmrnn.core.analysis import boundary_counts

    true = torch.tensor([[0, 1], [1, 0], [0, 0]], dtype=torch.bool)  # (T=3, B=2)
    pred = torch.tensor([[1, 0], [0, 0], [0, 1]], dtype=torch.bool)
    # tolerance 1 within each column only: (0,0) is next to (1,0); (2,1) is not next to (0,1)
    assert boundary_counts(pred, true, 1).tolist() == [1, 2, 1, 2]
    assert boundary_counts(pred, true, 0).tolist() == [0, 2, 0, 2]


# ids: 0 = space, 1 = '.', 2.. letters; the synthetic data's word rule and its phrase rule
WORD, PHRASE, DELIMITERS = ([0, 1], [1]), ([], [1]), [0, 1]


def test_the_delimiter_convention_is_the_before_rule_one_step_later() -> None:
    from hmrnn.core.analysis import true_boundaries, truth_kinds

    rules = {"word": WORD, "phrase": PHRASE}
    assert truth_kinds(rules) == ["word", "word_at_delim", "phrase"]  # '.' ends on itself
    text = torch.tensor([2, 3, 0, 4, 1, 5, 0, 0, 6])  # "ab c.d  e"
    truth = true_boundaries(text[:-1, None], text[1:, None], rules, DELIMITERS)
    marked = {kind: torch.flatten(t).nonzero().flatten().tolist() for kind, t in truth.items()}
    assert marked["word"] == [1, 3, 4, 5]  # b, c, the '.', d (before the first of two spaces)
    assert marked["word_at_delim"] == [2, 4, 6]  # the space, the '.' (closing c), one space
    assert marked["phrase"] == [4]


def test_the_delimiter_convention_looks_back_across_the_edge_of_a_batch() -> None:
    from hmrnn.core.analysis import mark_boundaries_at_delimiter

    text = torch.tensor([[2, 0], [0, 0], [3, 0]])  # (T=3, B=2): "a b" and "   "
    whole = mark_boundaries_at_delimiter(text, *WORD, DELIMITERS)
    assert whole.tolist() == [[False, True], [True, False], [False, False]]
    # the second batch of a stream whose first batch ended on "a" (row 0) and " " (row 1)
    later = mark_boundaries_at_delimiter(text, *WORD, DELIMITERS, previous=torch.tensor([2, 0]))
    assert later[0].tolist() == [False, False]  # "a" is no delimiter; " " after " " closes none
    assert later[1:].tolist() == whole[1:].tolist()


def test_each_firing_convention_scores_one_against_its_own_truth_at_tolerance_0() -> None:
    from hmrnn.core.analysis import true_boundaries

    text = torch.tensor([2, 3, 0, 4, 5, 1, 6, 0, 7, 1, 3])  # "ab cd.e f.b"
    inputs = text[:-1]
    truth = true_boundaries(inputs[:, None], text[1:, None], {"word": WORD}, DELIMITERS)
    word, at_delim = truth["word"][:, 0], truth["word_at_delim"][:, 0]
    on_delimiter = torch.isin(inputs, torch.tensor(DELIMITERS))  # fixed_boundary by delimiter
    assert boundary_scores(on_delimiter, at_delim, 0)["f1"] == 1.0
    assert boundary_scores(on_delimiter, word, 0)["f1"] < 0.5  # only the '.'s coincide
    assert boundary_scores(on_delimiter, word, 1)["f1"] == 1.0  # one step late, within 1
    on_last_letter = word  # a detector that predicts the delimiter
    assert boundary_scores(on_last_letter, word, 0)["f1"] == 1.0
    assert boundary_scores(on_last_letter, at_delim, 0)["f1"] < 0.5
