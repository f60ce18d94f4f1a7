"""Imposed boundaries for the fixed-boundary ablation: periodic or given by the data.

Layer l's detector is replaced by a counter. It fires on every ``periods[l]``-th *event* of its
base, where the base of the first detector is every step (``periodic``, clockwork-like) or the
steps whose input is a delimiter (``delimiter``: a word separator for text, pen-up for
handwriting), and the base of each higher detector is the firing of the one below. So
``periods=(4, 3)`` periodic fires layer 1 every 4 steps and layer 2 every 12; ``periods=(1, 5)``
by delimiter fires layer 1 at every word end and layer 2 at every fifth.

Only the input x_t decides z_t (the delimiter has been read): the next symbol is never looked at,
so the language model's prediction of x_{t+1} does not learn it from the boundary.

The per-row count of events modulo the period (the *phase*) travels with the recurrent state, so
the pattern continues across truncated-BPTT segments exactly as over one long sequence.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from hmrnn.config import FIXED_SOURCES


class FixedState(NamedTuple):
    """The recurrent state of a model with :class:`FixedBoundaries`: the HM-LSTM's
    :class:`~hmrnn.core.hmlstm.HMLSTMState` fields (which the HM-LSTM reads) plus the counters.

    Shape: h, c (K, B, H); z (K, B); phase (D, B) int64, each counter's events modulo its period.
    """

    h: Tensor
    c: Tensor
    z: Tensor
    phase: Tensor


class FixedBoundaries(nn.Module):
    """Counters that stand in for the boundary detectors.

    Args:
        num_layers: K, the HM-LSTM's layers (the output has K columns).
        periods: one period >= 1 per detector layer, bottom first (at most K).
        source: ``"periodic"`` (the base of layer 1 is every step) or ``"delimiter"`` (the
            steps the caller marks as events, see :meth:`forward`).

    Inputs: events, phase
        events: (T, B) bool, the delimiter steps; for ``periodic`` only its shape and device
            are used (every step is an event).
        phase: (D, B) int64 events counted modulo each period so far, or None for zeros
            (D = len(periods)).

    Outputs: boundaries, phase
        boundaries: (T, B, K) in {0, 1}, float32; columns past D are zero.
        phase: (D, B) after the last step.
    """

    def __init__(self, num_layers: int, periods: list[int] | tuple[int, ...], source: str) -> None:
        super().__init__()
        if source not in FIXED_SOURCES:
            raise ValueError(f"source must be one of {FIXED_SOURCES}, got {source!r}")
        periods = [int(p) for p in periods]
        if not 1 <= len(periods) <= num_layers or any(p < 1 for p in periods):
            raise ValueError(
                f"periods must hold 1 to num_layers={num_layers} integers >= 1, got {periods}"
            )
        self.num_layers = num_layers
        self.periods = periods
        self.source = source

    def extra_repr(self) -> str:
        return f"num_layers={self.num_layers}, periods={self.periods}, source={self.source!r}"

    def forward(self, events: Tensor, phase: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if self.source == "periodic":
            events = torch.ones_like(events, dtype=torch.bool)
        T, B = events.shape
        if phase is None:
            phase = torch.zeros(len(self.periods), B, dtype=torch.long, device=events.device)
        out = torch.zeros(T, B, self.num_layers, device=events.device)
        new_phase = []
        for l, period in enumerate(self.periods):
            count = phase[l] + events.long().cumsum(0)  # (T, B) events so far, this layer's base
            fire = events & (count % period == 0)
            out[..., l] = fire.float()
            new_phase.append(count[-1] % period if T else phase[l])
            events = fire  # the next layer counts this layer's firings
        return out, torch.stack(new_phase)
