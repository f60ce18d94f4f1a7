"""The weights the loop multiplies with: gate order, oneDNN packing, and the inference cache.

The loop orders each layer's gate rows i, f, o, g, z (the parameters: i, f, g, o, z), so that one
sigmoid covers the four gates, and doubles the g columns: g = tanh(s_g) = 2 sigmoid(2 s_g) - 1
(a lone tanh is 3x slower here). On CPU in float32 the per-step multiplies go through oneDNN with
weights packed once per call, 1.2-1.5x faster than the default GEMM for these shapes
(docs/performance.md), both forward (x W^T) and for the input gradients (ds W).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import Tensor

if TYPE_CHECKING:
    from hmrnn.core.hmlstm import HMLSTM

USE_ONEDNN = True
"""Multiply with oneDNN's packed weights on CPU for float32 (set False to use torch's GEMM)."""


def _onednn_usable(weight: Tensor) -> bool:
    return (
        USE_ONEDNN
        and weight.device.type == "cpu"
        and weight.dtype == torch.float32
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
    )


class StepMatmul:
    """``x @ wt (+ bias)`` and ``g @ wt.T`` for one layer's (N, G) step weight ``wt``.

    On CPU in float32 both go through oneDNN with the weight packed on first use (the private ops
    ``mkldnn._reorder_linear_weight`` / ``mkldnn._linear_pointwise``); elsewhere, or if those ops
    fail (they are private and may change between torch releases), through ``torch.addmm``.
    """

    def __init__(self, wt: Tensor, batch_size: int, pack: bool = True) -> None:
        self.wt = wt
        self.batch_size = batch_size
        self.onednn = pack and _onednn_usable(wt)
        self._forward_packed: Tensor | None = None
        self._backward_packed: Tensor | None = None
        self._blocks: dict[int, StepMatmul] = {}

    def block(self, k: int, width: int) -> StepMatmul:
        """The multiply by rows ``[k * width, (k + 1) * width)`` of wt alone (one input block),
        kept for reuse."""
        if k not in self._blocks:
            rows = self.wt[k * width : (k + 1) * width]
            self._blocks[k] = StepMatmul(rows, self.batch_size, self.onednn)
        return self._blocks[k]

    def _pack(self, weight: Tensor) -> Tensor | None:
        try:
            return torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), self.batch_size)
        except RuntimeError:  # the private op changed or is missing: torch's GEMM from now on
            global USE_ONEDNN
            USE_ONEDNN = False
            self.onednn = False
            return None

    def forward(self, x: Tensor, bias: Tensor | None = None, add: Tensor | None = None) -> Tensor:
        """x (M, N) -> x @ wt + bias + add (M, G); ``bias`` (G,), ``add`` (M, G)."""
        if self.onednn and self._forward_packed is None:
            self._forward_packed = self._pack(self.wt.t())
        if self.onednn:
            if add is not None:
                return torch.ops.mkldnn._linear_pointwise.binary(
                    x, add, self._forward_packed, bias, "add"
                )
            return torch.ops.mkldnn._linear_pointwise(x, self._forward_packed, bias, "none", [], "")
        out = x @ self.wt if bias is None else torch.addmm(bias, x, self.wt)
        return out if add is None else out.add_(add)

    def backward(self, g: Tensor) -> Tensor:
        """g (M, G) -> g @ wt.T (M, N)."""
        if self.onednn and self._backward_packed is None:
            self._backward_packed = self._pack(self.wt)
        if self.onednn:
            packed = self._backward_packed
            return torch.ops.mkldnn._linear_pointwise(g, packed, None, "none", [], "")
        return g @ self.wt.t()


def gate_order(H: int, G: int, device: torch.device) -> Tensor:
    """Row permutation from the parameters' i, f, g, o, z to the loop's i, f, o, g, z."""
    r = torch.arange(G, device=device)
    return torch.cat([r[: 2 * H], r[3 * H : 4 * H], r[2 * H : 3 * H], r[4 * H :]])


class LoopWeights(NamedTuple):
    """An HM-LSTM's weights in the loop's gate order (:func:`gate_order`), g columns doubled.

    Shape: input_weight (H_in, G_0) and input_bias (G_0,), layer 0's bottom-up term;
    step_weights, per layer (N, G): the recurrent, top-down and (l > 0) bottom-up blocks stacked
    (:meth:`hmrnn.core.HMLSTM.step_weight`); biases (G,) of layers 1..K-1 (layer 0's is in its
    bottom-up term).
    """

    input_weight: Tensor
    input_bias: Tensor
    step_weights: list[Tensor]
    biases: list[Tensor]

    def bottom_up(self, input: Tensor) -> Tensor:
        """Layer 0's W x_t + b for every step in one multiply: (T, B, H_in) -> (T, B, G_0)."""
        T, B, _ = input.shape
        return torch.addmm(self.input_bias, input.reshape(T * B, -1), self.input_weight).view(
            T, B, -1
        )


def loop_weights(rnn: HMLSTM, device: torch.device) -> LoopWeights:
    """``rnn``'s parameters in the loop's order (differentiable: autograd maps their gradients
    back to the parameters)."""
    H, K = rnn.hidden_size, rnn.num_layers
    orders = [gate_order(H, rnn.gate_rows(l), device) for l in range(K)]
    scales = []  # the g columns doubled: the loop computes g = tanh(s_g) as 2 sigmoid(2 s_g) - 1
    for l in range(K):
        scale = torch.ones(rnn.gate_rows(l), device=device, dtype=rnn.param("bias", l).dtype)
        scale[3 * H : 4 * H] = 2.0
        scales.append(scale)
    input_weight = (rnn.param("weight_ih", 0)[orders[0]] * scales[0][:, None]).t()
    input_bias = rnn.param("bias", 0)[orders[0]] * scales[0]
    step_weights = [rnn.step_weight(l)[:, orders[l]] * scales[l] for l in range(K)]
    biases = [rnn.param("bias", l)[orders[l]] * scales[l] for l in range(1, K)]
    return LoopWeights(input_weight, input_bias, step_weights, biases)


class WeightCache:
    """One module's :class:`LoopWeights` and their packed multiplies for passes without autograd,
    kept while the parameters, batch size, device and dtype stay the same (an optimiser step
    changes a parameter's version, so the next pass rebuilds them).

    Derived data: a copy or pickle of the module carries an empty cache.
    """

    def __init__(self) -> None:
        self._key: tuple[Any, ...] | None = None
        self._weights: LoopWeights | None = None
        self._matmuls: list[StepMatmul] = []

    def get(self, rnn: HMLSTM, input: Tensor) -> tuple[LoopWeights, list[StepMatmul]]:
        """The weights and per-layer multiplies for ``input`` (T, B, H_in)."""
        batch_size = input.size(1)
        params = tuple((p.data_ptr(), p._version) for p in rnn.parameters())
        key = (batch_size, input.device, input.dtype, params)
        if self._weights is None or self._key != key:
            self._weights = loop_weights(rnn, input.device)
            self._matmuls = [StepMatmul(w, batch_size) for w in self._weights.step_weights]
            self._key = key
        return self._weights, self._matmuls

    def __getstate__(self) -> dict[str, Any]:
        return {"_key": None, "_weights": None, "_matmuls": []}
