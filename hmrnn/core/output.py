"""The gated output module (model.md §3): every layer's h feeds the output embedding.

g_t^l = sigmoid(w^l . [h_t^1; ...; h_t^K])           one scalar gate per layer and step
h_t^e = ReLU( sum_l g_t^l * W_l^e h_t^l )              output embedding, size E, no biases
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class OutputModule(nn.Module):
    """Gated sum of all layers' hidden states, then ReLU.

    Args:
        num_layers: K.
        hidden_size: H.
        embedding_size: E, the size of h^e.

    Shape:
        input: (..., K, H), e.g. the HM-LSTM's (T, B, K, H) output.
        output: (..., E).
    """

    def __init__(self, num_layers: int, hidden_size: int, embedding_size: int) -> None:
        super().__init__()
        self.num_layers, self.hidden_size, self.embedding_size = (
            num_layers,
            hidden_size,
            embedding_size,
        )
        K, H = num_layers, hidden_size
        self.gate = nn.Linear(K * H, K, bias=False)  # row l is w^l
        self.embed = nn.Linear(K * H, embedding_size, bias=False)  # [W_1^e, ..., W_K^e]

    def forward(self, hidden: Tensor) -> Tensor:
        lead = hidden.shape[:-2]
        K, H = self.num_layers, self.hidden_size
        flat = hidden.reshape(-1, K * H)  # (N, K*H)
        g = torch.sigmoid(self.gate(flat))  # (N, K)
        # sum_l g^l W_l^e h^l = W^e [g^1 h^1; ...; g^K h^K]: one multiply for all layers
        gated = (flat.view(-1, K, H) * g.unsqueeze(-1)).view(-1, K * H)
        return torch.relu(self.embed(gated)).view(*lead, self.embedding_size)

    def layer_gates(self, hidden: Tensor) -> Tensor:
        """The gates g_t^l, shape (..., K): how much each layer contributes at each step."""
        return torch.sigmoid(self.gate(hidden.reshape(*hidden.shape[:-2], -1)))
