"""The stacked-LSTM baseline with the HM-LSTM's calling contract.

Each layer is its own single-layer ``torch.nn.LSTM`` (cuDNN on GPU, oneDNN on CPU), since the
output module reads every layer's h at every step. With ``layer_norm`` each layer is the LN-LSTM
of Ba et al. (input and recurrent projections normalised separately, c_t before its tanh), the
paper's "LN LSTM" row; it runs through the HM-LSTM's hand-written loop
(:func:`hmrnn.core.fused.lstm_forward`, every layer updating), or with ``fused = False`` as a
loop of autograd operations over time.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hmrnn.core.fused import WeightCache, lstm_forward
from hmrnn.core.fused.graphs import graphed_call
from hmrnn.core.hmlstm import HMLSTMState, layer_norm


class StackedLSTM(nn.Module):
    """K stacked LSTM layers returning every layer's output, like :class:`HMLSTM`.

    Args: input_size, hidden_size, num_layers, layer_norm, batch_first (as HMLSTM).

    Inputs: input (T, B, H_in), state (HMLSTMState or None; its z is ignored), boundaries
    (must be None: an LSTM has no boundaries).
    Outputs: output (T, B, K, H), state (z all zeros), boundaries (T, B, K) all zeros.

    Attributes (plain, not saved), with layer norm: ``fused`` (default True) runs the
    hand-written loop, ``native`` (default True) with its per-step work in the fused cell
    (C++ on CPU, Triton on CUDA; False torch operations, or "cpp" / "triton" by name),
    ``cuda_graphs`` (default False) captured into CUDA graphs in training on a GPU;
    ``fused_weights`` keeps its weights between passes without autograd.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 3,
        *,
        layer_norm: bool = False,
        batch_first: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(num_layers, int) or num_layers < 1:
            raise ValueError(f"num_layers must be an integer >= 1, got {num_layers!r}")
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.layer_norm, self.batch_first = layer_norm, batch_first
        self.fused = True
        self.native = True
        self.cuda_graphs = False
        self.fused_weights = WeightCache()
        sizes = [input_size] + [hidden_size] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.LSTM(n, hidden_size) for n in sizes)
        if layer_norm:
            G = 4 * hidden_size
            self.ln_ih = nn.Parameter(torch.ones(num_layers, G))
            self.ln_hh = nn.Parameter(torch.ones(num_layers, G))
            self.ln_c_weight = nn.Parameter(torch.ones(num_layers, hidden_size))
            self.ln_c_bias = nn.Parameter(torch.zeros(num_layers, hidden_size))
        with torch.no_grad():  # the forget-gate bias of +1, as in the HM-LSTM (model.md §5)
            for lstm in self.layers:
                lstm.bias_ih_l0.zero_()
                lstm.bias_hh_l0.zero_()
                lstm.bias_ih_l0[hidden_size : 2 * hidden_size] = 1.0

    def forward(
        self, input: Tensor, state: HMLSTMState | None = None, boundaries: Tensor | None = None
    ) -> tuple[Tensor, HMLSTMState, Tensor]:
        if boundaries is not None:
            raise ValueError("boundaries cannot be imposed on an LSTM (it has none)")
        if input.dim() != 3 or input.size(-1) != self.input_size:
            raise ValueError(
                f"input must have shape (T, B, {self.input_size}), got {tuple(input.shape)}"
            )
        K, H = self.num_layers, self.hidden_size
        if state is None:
            B = input.size(0 if self.batch_first else 1)
            h0 = input.new_zeros(K, B, H)
            state = HMLSTMState(h0, torch.zeros_like(h0), input.new_zeros(K, B))
        if self.cuda_graphs and self.layer_norm and self.fused:  # (fused.graphs)
            replayed = graphed_call(self, input, HMLSTMState(*state[:3]), None)
            if replayed is not None:
                return replayed
        if self.batch_first:
            input = input.transpose(0, 1)
        T, B, _ = input.shape
        if self.layer_norm and self.fused:
            output, h_n, c_n, _, _ = lstm_forward(self, input, HMLSTMState(*state[:3]))
            new_state = HMLSTMState(h_n, c_n, input.new_zeros(K, B))
            bounds = input.new_zeros(T, B, K)
            if self.batch_first:
                output, bounds = output.transpose(0, 1), bounds.transpose(0, 1)
            return output, new_state, bounds
        outputs, hs, cs = [], [], []
        x = input
        for l, lstm in enumerate(self.layers):
            h0, c0 = state.h[l : l + 1].contiguous(), state.c[l : l + 1].contiguous()
            if self.layer_norm:
                x, (h, c) = self._ln_layer(l, lstm, x, h0[0], c0[0])
            else:
                x, (h, c) = lstm(x, (h0, c0))
                h, c = h[0], c[0]
            outputs.append(x)
            hs.append(h)
            cs.append(c)
        output = torch.stack(outputs, dim=2)  # (T, B, K, H)
        new_state = HMLSTMState(torch.stack(hs), torch.stack(cs), input.new_zeros(K, B))
        bounds = input.new_zeros(T, B, K)
        if self.batch_first:
            output, bounds = output.transpose(0, 1), bounds.transpose(0, 1)
        return output, new_state, bounds

    def _ln_layer(
        self, l: int, lstm: nn.LSTM, x: Tensor, h: Tensor, c: Tensor
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """One LN-LSTM layer over time: (T, B, n) -> (T, B, H)."""
        H = self.hidden_size
        bias = lstm.bias_ih_l0 + lstm.bias_hh_l0
        projected = layer_norm(x @ lstm.weight_ih_l0.t(), self.ln_ih[l]) + bias  # (T, B, 4H)
        outs = []
        for x_t in projected.unbind(0):
            s = x_t + layer_norm(h @ lstm.weight_hh_l0.t(), self.ln_hh[l])
            i, f = torch.sigmoid(s[:, :H]), torch.sigmoid(s[:, H : 2 * H])
            g, o = torch.tanh(s[:, 2 * H : 3 * H]), torch.sigmoid(s[:, 3 * H :])
            c = f * c + i * g
            h = o * torch.tanh(layer_norm(c, self.ln_c_weight[l], self.ln_c_bias[l]))
            outs.append(h)
        return torch.stack(outs), (h, c)
