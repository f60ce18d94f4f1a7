"""The character language model: embedding -> HM-LSTM -> output module -> softmax."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hmrnn.core.cells import HIERARCHICAL, build_cell
from hmrnn.core.fixed import FixedBoundaries, FixedState
from hmrnn.core.hmlstm import HMLSTMState
from hmrnn.core.output import OutputModule


class LMOutput(NamedTuple):
    """What one forward pass of :class:`CharLM` returns.

    Shape:
        logits: (T, B, V) unnormalised next-symbol scores.
        loss: 0-d mean negative log-likelihood in nats per symbol (None without targets).
        state: the recurrent state after the last step.
        boundaries: (T, B, K) the boundaries used.
    """

    logits: Tensor
    loss: Tensor | None
    state: HMLSTMState | FixedState
    boundaries: Tensor


class CharLM(nn.Module):
    """Character-level language model around an :class:`HMLSTM` (model.md §§3 and 6).

    Args:
        vocab_size: V.
        hidden_size: H of every HM-LSTM layer.
        num_layers: K.
        embedding_dim: size of the input character embedding (128 in the paper; no
            non-linearity).
        output_size: E, the output embedding's size.
        cell: ``"hmlstm"`` (the paper's model) or ``"lstm"`` (:class:`StackedLSTM`, the baseline).
        fixed: :class:`FixedBoundaries` that impose the HM-LSTM's boundaries (the fixed-boundary
            ablation), or None to learn them.
        delimiters: the token ids whose input is a ``delimiter`` event for ``fixed`` (the data
            set's word separators).
        **rnn_options: keyword options of the recurrent core: layer_norm, and for the HM-LSTM
            boundary, top_layer_boundary and grad_through_ops.

    Inputs: tokens (T, B) int64, targets (T, B) or None, state, boundaries (T, B, K) or None
    (imposed by the caller; with ``fixed`` the counters impose them and the state carries their
    phase). The model is time-major throughout.
    """

    def __init__(
        self,
        vocab_size: int,
        hidden_size: int,
        num_layers: int = 3,
        embedding_dim: int = 128,
        output_size: int | None = None,
        cell: str = "hmlstm",
        fixed: FixedBoundaries | None = None,
        delimiters: list[int] | tuple[int, ...] = (),
        **rnn_options: object,
    ) -> None:
        super().__init__()
        if not isinstance(vocab_size, int) or vocab_size < 2:
            raise ValueError(f"vocab_size must be an integer >= 2, got {vocab_size!r}")
        output_size = hidden_size if output_size is None else output_size
        self.vocab_size = vocab_size
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        self.rnn: Any = build_cell(cell, embedding_dim, hidden_size, num_layers, rnn_options)
        self.cell = cell
        if fixed is not None and cell not in HIERARCHICAL:
            raise ValueError("fixed boundaries need cell='hmlstm'")
        if fixed is not None and fixed.source == "delimiter" and not delimiters:
            raise ValueError("fixed boundaries by delimiter need the delimiters' token ids")
        self.fixed = fixed
        self.register_buffer("delimiters", torch.tensor(list(delimiters), dtype=torch.long))
        self.output = OutputModule(num_layers, hidden_size, output_size)
        self.head = nn.Linear(output_size, vocab_size)

    def forward(
        self,
        tokens: Tensor,
        targets: Tensor | None = None,
        state: HMLSTMState | FixedState | None = None,
        boundaries: Tensor | None = None,
    ) -> LMOutput:
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be 2-d (T, B), got shape {tuple(tokens.shape)}")
        phase = None
        if self.fixed is not None and boundaries is None:
            events = torch.isin(tokens, self.delimiters)  # (T, B) the input is a delimiter
            boundaries, phase = self.fixed(
                events, state.phase if isinstance(state, FixedState) else None
            )
        hidden, state, bounds = self.rnn(self.embedding(tokens), state, boundaries)
        if phase is not None:
            state = FixedState(*state, phase)
        logits = self.head(self.output(hidden))  # (T, B, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.reshape(-1, self.vocab_size), targets.reshape(-1))
        return LMOutput(logits, loss, state, bounds)
