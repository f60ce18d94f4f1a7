"""The handwriting model (model.md §3): HM-LSTM -> output module -> mixture density head.

Input and target per point: (dx, dy, pen_up), dx and dy normalised by the training set's mean
and standard deviation; the model reads point t and gives the distribution of point t + 1.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from hmrnn.core.cells import HIERARCHICAL, build_cell
from hmrnn.core.fixed import FixedBoundaries, FixedState
from hmrnn.core.hmlstm import HMLSTMState
from hmrnn.core.mdn import MixtureDensityHead, MixtureParams, log_likelihood, sample
from hmrnn.core.output import OutputModule


class HandwritingOutput(NamedTuple):
    """Shape: params over (T, B); point_ll (T, B) log p of each target point, 0 on padding;
    sequence_ll (B,) their sum per sequence; boundaries (T, B, K)."""

    params: MixtureParams
    point_ll: Tensor | None
    sequence_ll: Tensor | None
    state: HMLSTMState | FixedState
    boundaries: Tensor


class HandwritingModel(nn.Module):
    """HM-LSTM (or stacked LSTM) over pen offsets with a 20-component mixture density output.

    Args:
        hidden_size: H (400 in the paper).
        num_layers: K.
        output_size: E (400 in the paper).
        num_components: M (20).
        cell: ``"hmlstm"`` or ``"lstm"``.
        fixed: :class:`FixedBoundaries` imposing the boundaries (the fixed-boundary ablation;
            ``delimiter`` events are the input points with the pen lifted), or None.
        **rnn_options: options of the recurrent core (layer_norm, boundary, ...).
    """

    def __init__(
        self,
        hidden_size: int = 400,
        num_layers: int = 3,
        output_size: int = 400,
        num_components: int = 20,
        cell: str = "hmlstm",
        fixed: FixedBoundaries | None = None,
        **rnn_options: object,
    ) -> None:
        super().__init__()
        if fixed is not None and cell not in HIERARCHICAL:
            raise ValueError("fixed boundaries need cell='hmlstm'")
        self.fixed = fixed
        self.rnn: Any = build_cell(cell, 3, hidden_size, num_layers, rnn_options)
        self.output = OutputModule(num_layers, hidden_size, output_size)
        self.head = MixtureDensityHead(output_size, num_components)

    def forward(
        self,
        inputs: Tensor,
        targets: Tensor | None = None,
        mask: Tensor | None = None,
        state: HMLSTMState | FixedState | None = None,
    ) -> HandwritingOutput:
        """Shape: inputs, targets (T, B, 3); mask (T, B) bool, True on real target points."""
        imposed = phase = None
        if self.fixed is not None:  # pen-up inputs are the delimiter events
            imposed, phase = self.fixed(
                inputs[..., 2] > 0.5, state.phase if isinstance(state, FixedState) else None
            )
        hidden, state, bounds = self.rnn(inputs, state, imposed)
        if phase is not None:
            state = FixedState(*state, phase)
        params = self.head(self.output(hidden))
        point_ll = sequence_ll = None
        if targets is not None:
            point_ll = log_likelihood(params, targets)
            if mask is not None:
                point_ll = torch.where(mask, point_ll, torch.zeros_like(point_ll))
            sequence_ll = point_ll.sum(0)
        return HandwritingOutput(params, point_ll, sequence_ll, state, bounds)

    @torch.no_grad()
    def generate(
        self,
        num_points: int,
        batch_size: int = 1,
        generator: torch.Generator | None = None,
        temperature: float = 1.0,
        start: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Draw ``num_points`` points step by step with the state carried.

        Returns: points (num_points, B, 3) in the normalised space and boundaries (num_points,
        B, K).
        """
        device = next(self.parameters()).device
        point = torch.zeros(batch_size, 3, device=device) if start is None else start
        state, points, bounds = None, [], []
        for _ in range(num_points):
            out = self(point.unsqueeze(0), state=state)
            state = out.state
            point = sample(MixtureParams(*(p[0] for p in out.params)), generator, temperature)
            points.append(point)
            bounds.append(out.boundaries[0])
        return torch.stack(points), torch.stack(bounds)
