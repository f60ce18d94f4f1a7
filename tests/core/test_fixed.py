"""Imposed boundaries (the fixed-boundary ablation): the counting rule, and the phase carried
across truncated-BPTT segments."""

from __future__ import annotations

import pytest
import torch

from hmrnn.core import CharLM
from hmrnn.core.fixed import FixedBoundaries
from hmrnn.core.handwriting import HandwritingModel


def as_str(column: torch.Tensor) -> str:
    return "".join(str(int(v)) for v in column)


def test_periodic_fires_every_period_and_higher_layers_count_the_lower() -> None:
    fixed = FixedBoundaries(3, [3, 2], "periodic")
    bounds, phase = fixed(torch.zeros(12, 1, dtype=torch.bool))
    assert bounds.shape == (12, 1, 3)
    assert as_str(bounds[:, 0, 0]) == "001001001001"
    assert as_str(bounds[:, 0, 1]) == "000001000001"  # every 2nd firing of layer 1
    assert as_str(bounds[:, 0, 2]) == "0" * 12  # the top layer has no detector
    assert phase.tolist() == [[0], [0]]


def test_delimiter_fires_on_the_delimiter_input_itself() -> None:
    text = "ab cd ef gh ij"
    events = torch.tensor([[ch == " "] for ch in text])
    bounds, phase = FixedBoundaries(3, [1, 2], "delimiter")(events)
    assert as_str(bounds[:, 0, 0]) == "".join("1" if ch == " " else "0" for ch in text)
    assert as_str(bounds[:, 0, 1]) == "00000100000100"  # every second space
    assert phase.tolist() == [[0], [0]]


def test_the_phase_continues_the_pattern_across_segments() -> None:
    torch.manual_seed(0)
    events = torch.rand(50, 4) < 0.3
    fixed = FixedBoundaries(3, [2, 3], "delimiter")
    whole, end = fixed(events)
    first, phase = fixed(events[:17])
    second, phase = fixed(events[17:], phase)
    assert torch.equal(torch.cat([first, second]), whole) and torch.equal(phase, end)


@pytest.mark.parametrize(
    ("periods", "source"), [([], "periodic"), ([0], "periodic"), ([1, 1, 1, 1], "delimiter")]
)
def test_bad_arguments_are_refused(periods: list[int], source: str) -> None:
    with pytest.raises(ValueError, match="periods must hold"):
        FixedBoundaries(3, periods, source)
    with pytest.raises(ValueError, match="source must be one of"):
        FixedBoundaries(3, [1], "words")


def test_char_lm_carries_the_phase_so_segments_equal_one_pass() -> None:
    torch.manual_seed(0)
    fixed = FixedBoundaries(3, [1, 3], "delimiter")
    model = CharLM(7, 16, 3, 8, 16, fixed=fixed, delimiters=[0, 1]).double()
    tokens = torch.randint(0, 7, (60, 3))
    whole = model(tokens)
    first = model(tokens[:25])
    second = model(tokens[25:], state=first.state)
    assert torch.equal(torch.cat([first.boundaries, second.boundaries]), whole.boundaries)
    torch.testing.assert_close(torch.cat([first.logits, second.logits]), whole.logits)
    assert torch.equal(second.state.phase, whole.state.phase)
    assert type(whole.state).__name__ == "FixedState" and len(model(tokens[:3]).state) == 4
    delimiter = (tokens == 0) | (tokens == 1)
    assert torch.equal(whole.boundaries[..., 0].bool(), delimiter)
    assert whole.boundaries[..., 1].sum() > 0


def test_char_lm_needs_delimiters_and_the_hmlstm() -> None:
    with pytest.raises(ValueError, match="delimiters"):
        CharLM(7, 16, fixed=FixedBoundaries(3, [1, 3], "delimiter"))
    with pytest.raises(ValueError, match="cell='hmlstm'"):
        CharLM(7, 16, cell="lstm", fixed=FixedBoundaries(3, [1, 3], "periodic"))


def test_handwriting_boundaries_follow_pen_up_in_the_forward_and_in_sampling() -> None:
    torch.manual_seed(0)
    model = HandwritingModel(16, 3, 16, 2, fixed=FixedBoundaries(3, [1, 2], "delimiter"))
    inputs = torch.randn(30, 2, 3)
    inputs[..., 2] = (torch.rand(30, 2) < 0.2).float()
    out = model(inputs)
    assert torch.equal(out.boundaries[..., 0].bool(), inputs[..., 2] > 0.5)
    points, bounds = model.generate(40, batch_size=2, generator=torch.Generator().manual_seed(1))
    pen_up = points[..., 2] > 0.5
    # the boundary at step t is imposed by the point fed in at t: the one drawn at t - 1
    assert torch.equal(bounds[1:, :, 0].bool(), pen_up[:-1])
