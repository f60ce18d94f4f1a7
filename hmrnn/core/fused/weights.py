"""The weights the loop multiplies with: gate order, oneDNN packing, and the inference cache.

The loop orders each layer's gate rows i, f, o, g, z (the parameters: i, f, g, o, z), so that one
sigmoid covers the four gates, and doubles the g columns: g = tanh(s_g) = 2 sigmoid(2 s_g) - 1
(a lone tanh is 3x slower here). On CPU in float32 the per-step multiplies go through oneDNN with
weights packed once per call, 1.2-1.5x faster than the default GEMM for these shapes
(docs/performance.md), both forward (x W^T) and for the input gradients (ds W).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import Tensor

from hmrnn.core.autograd_step import layer_norm

if TYPE_CHECKING:
    from hmrnn.core.hmlstm import HMLSTM
    from hmrnn.core.lstm import StackedLSTM

USE_ONEDNN = True
"""Multiply with oneDNN's packed weights on CPU for float32 (set False to use torch's GEMM)."""


def onednn_usable(weight: Tensor) -> bool:
    """Whether multiplies by ``weight`` may go through oneDNN's private linear ops."""
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
        self.backward_wt: Tensor | None = None  # what backward() multiplies by, if not wt
        self.batch_size = batch_size
        self.onednn = pack and onednn_usable(wt)
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
        if x.dtype != self.wt.dtype:  # mixed precision: the multiply in the weight's dtype
            x = x.to(self.wt.dtype)
        if bias is None and add is not None:  # one launch (layer 0: its bias is in add)
            return torch.addmm(add, x, self.wt)
        out = x @ self.wt if bias is None else torch.addmm(bias, x, self.wt)
        return out if add is None else out.add_(add)

    def drop_forward(self) -> None:
        """Frees the weight packed for :meth:`forward` (and its blocks'), no longer needed."""
        self._forward_packed = None
        for block in self._blocks.values():
            block.drop_forward()

    def backward_weight(self) -> Tensor:
        """The (N, G) weight the input gradients are multiplied by: ``wt``, or with
        ``detector_input_grad=False`` ``wt`` with its z column zeroed
        (:func:`step_matmuls`)."""
        return self.wt if self.backward_wt is None else self.backward_wt

    def backward(self, g: Tensor) -> Tensor:
        """g (M, G) -> g @ backward_weight().T (M, N)."""
        wt = self.backward_weight()
        if self.onednn and self._backward_packed is None:
            self._backward_packed = self._pack(wt)
        if self.onednn:
            packed = self._backward_packed
            return torch.ops.mkldnn._linear_pointwise(g, packed, None, "none", [], "")
        return g.to(wt.dtype) @ wt.t()


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

    With layer norm the g columns of the weights are not doubled (that would change the
    normalisation's statistics); the gains and biases are, which doubles the g columns of s all
    the same. Then step_weights are (n, H, G), one block per projection (recurrent, top-down,
    bottom-up, those the layer has), ``gains`` per layer (n, G) the projections' gains in the
    same order, ``input_gain`` (G_0,) the gain of layer 0's bottom-up projection, and ``norm_c``
    per layer (gain, bias), each (H,), of c_t's normalisation.
    """

    input_weight: Tensor
    input_bias: Tensor
    step_weights: list[Tensor]
    biases: list[Tensor]
    input_gain: Tensor | None = None
    gains: list[Tensor] | None = None
    norm_c: list[tuple[Tensor, Tensor]] | None = None

    def bottom_up(self, input: Tensor, cut_z: bool = False) -> Tensor:
        """Layer 0's W x_t + b for every step in one multiply: (T, B, H_in) -> (T, B, G_0);
        with layer norm, the normalised projection times its gain, plus b. ``cut_z``: the z
        column (the last) reads the input detached (``detector_input_grad=False``)."""
        T, B, _ = input.shape
        x = input.reshape(T * B, -1)
        if cut_z:
            W = self.input_weight
            P = torch.cat([x @ W[:, :-1], x.detach() @ W[:, -1:]], dim=1)
            out = P if self.input_gain is None else layer_norm(P, self.input_gain)
            out = out + self.input_bias
        elif self.input_gain is None:
            out = torch.addmm(self.input_bias, x, self.input_weight)
        else:
            out = layer_norm(x @ self.input_weight, self.input_gain) + self.input_bias
        return out.view(T, B, -1)

    def flat(self) -> list[Tensor]:
        """The tensors the loop differentiates, in :meth:`unflat`'s order."""
        out = [*self.step_weights, *self.biases]
        if self.gains is not None and self.norm_c is not None:
            out += [*self.gains, *(w for w, _ in self.norm_c), *(b for _, b in self.norm_c)]
        return out

    @staticmethod
    def unflat(K: int, layer_norm: bool, params: tuple[Tensor, ...]) -> LoopParams:
        """:meth:`flat`'s list back as (step weights, biases, gains, norm_c)."""
        weights, biases = list(params[:K]), list(params[K : 2 * K - 1])
        if not layer_norm:
            return weights, biases, None, None
        rest = params[2 * K - 1 :]
        gains, norm_c = list(rest[:K]), list(zip(rest[K : 2 * K], rest[2 * K :], strict=True))
        return weights, biases, gains, norm_c


LoopParams = tuple[
    list[Tensor], list[Tensor], list[Tensor] | None, list[tuple[Tensor, Tensor]] | None
]
"""Step weights, biases (layers 1..K-1), and with layer norm the gains (n, G) and c's (gain,
bias) per layer."""


def _g_doubled(G: int, H: int, like: Tensor) -> Tensor:
    """(G,) ones with the g columns (loop order i, f, o, g, z) at 2."""
    scale = torch.ones(G, device=like.device, dtype=like.dtype)
    scale[3 * H : 4 * H] = 2.0
    return scale


def loop_weights(rnn: HMLSTM, device: torch.device) -> LoopWeights:
    """``rnn``'s parameters in the loop's order (differentiable: autograd maps their gradients
    back to the parameters)."""
    H, K = rnn.hidden_size, rnn.num_layers
    orders = [gate_order(H, rnn.gate_rows(l), device) for l in range(K)]
    scales = [_g_doubled(rnn.gate_rows(l), H, rnn.param("bias", l)) for l in range(K)]
    biases = [rnn.param("bias", l)[orders[l]] * scales[l] for l in range(K)]
    if not rnn.layer_norm:
        input_weight = (rnn.param("weight_ih", 0)[orders[0]] * scales[0][:, None]).t()
        step_weights = [rnn.step_weight(l)[:, orders[l]] * scales[l] for l in range(K)]
        return LoopWeights(input_weight, biases[0], step_weights, biases[1:])
    gains = []
    for l in range(K):
        kinds = ["hh", "td"] if rnn.has_top_down(l) else ["hh"]
        kinds += ["ih"] if l > 0 else []
        gains.append(torch.stack([rnn.param(f"ln_{k}", l) for k in kinds])[:, orders[l]])
        gains[-1] = gains[-1] * scales[l]
    return LoopWeights(
        input_weight=rnn.param("weight_ih", 0)[orders[0]].t(),
        input_bias=biases[0],
        step_weights=[rnn.step_weight(l)[..., orders[l]] for l in range(K)],
        biases=biases[1:],
        input_gain=rnn.param("ln_ih", 0)[orders[0]] * scales[0],
        gains=gains,
        norm_c=[(rnn.param("ln_c_weight", l), rnn.param("ln_c_bias", l)) for l in range(K)],
    )


def lstm_loop_weights(stack: StackedLSTM) -> LoopWeights:
    """An LN-LSTM stack's parameters (nn.LSTM's i, f, g, o rows per layer) as the loop's."""
    H, K = stack.hidden_size, stack.num_layers
    device = stack.ln_ih.device
    order = gate_order(H, 4 * H, device)
    scale = _g_doubled(4 * H, H, stack.ln_ih)
    weights, biases, gains = [], [], []
    for l, lstm in enumerate(stack.layers):
        biases.append((lstm.bias_ih_l0 + lstm.bias_hh_l0)[order] * scale)
        blocks = [lstm.weight_hh_l0] + ([lstm.weight_ih_l0] if l > 0 else [])
        weights.append(torch.stack([w[order].t() for w in blocks]))
        ln = [stack.ln_hh[l]] + ([stack.ln_ih[l]] if l > 0 else [])
        gains.append(torch.stack(ln)[:, order] * scale)
    first = stack.layers[0]
    return LoopWeights(
        input_weight=first.weight_ih_l0[order].t(),
        input_bias=biases[0],
        step_weights=weights,
        biases=biases[1:],
        input_gain=stack.ln_ih[0][order] * scale,
        gains=gains,
        norm_c=[(stack.ln_c_weight[l], stack.ln_c_bias[l]) for l in range(K)],
    )


def module_loop_weights(rnn: HMLSTM | StackedLSTM, device: torch.device) -> LoopWeights:
    """:func:`loop_weights` of an HM-LSTM, :func:`lstm_loop_weights` of an LN-LSTM stack."""
    if hasattr(rnn, "layers"):
        return lstm_loop_weights(rnn)  # type: ignore[arg-type]
    return loop_weights(rnn, device)  # type: ignore[arg-type]


def step_matmuls(
    step_weights: list[Tensor],
    batch_size: int,
    pack: bool = True,
    dtype: torch.dtype | None = None,
    cut_z: Sequence[bool] = (),
) -> list[list[StepMatmul]]:
    """Per layer the step multiplies: one over the concatenated inputs (a 2-d step weight), or
    one per projection (layer norm: (n, H, G)); with ``dtype`` (mixed precision) the weights
    are cast to it once, here. Layers l with ``cut_z[l]`` multiply the input gradients by the
    weight with its z column (the last) zeroed: their z rows pass no gradient to the inputs
    (``detector_input_grad=False``), the weight gradients are unchanged."""
    out = []
    for l, w in enumerate(step_weights):
        if dtype is not None:
            w = w.to(dtype)
        blocks = w.unbind(0) if w.dim() == 3 else [w]
        matmuls = [StepMatmul(b, batch_size, pack) for b in blocks]
        if l < len(cut_z) and cut_z[l]:
            for mm in matmuls:
                mm.backward_wt = mm.wt.detach().clone()
                mm.backward_wt[:, -1] = 0
        out.append(matmuls)
    return out


class WeightCache:
    """One module's :class:`LoopWeights` and their packed multiplies for passes without autograd,
    kept while the parameters, batch size, device and dtype stay the same (an optimiser step
    changes a parameter's version, so the next pass rebuilds them).

    Derived data: a copy or pickle of the module carries an empty cache.
    """

    def __init__(self) -> None:
        self._key: tuple[Any, ...] | None = None
        self._weights: LoopWeights | None = None
        self._matmuls: list[list[StepMatmul]] = []

    def get(
        self, rnn: HMLSTM | StackedLSTM, input: Tensor
    ) -> tuple[LoopWeights, list[list[StepMatmul]]]:
        """The weights and per-layer multiplies (:func:`step_matmuls`) for ``input``
        (T, B, H_in)."""
        batch_size = input.size(1)
        params = tuple((p.data_ptr(), p._version) for p in rnn.parameters())
        key = (batch_size, input.device, input.dtype, params)
        if self._weights is None or self._key != key:
            with torch.no_grad():
                self._weights = module_loop_weights(rnn, input.device)
            self._matmuls = step_matmuls(self._weights.step_weights, batch_size)
            self._key = key
        return self._weights, self._matmuls

    def __getstate__(self) -> dict[str, Any]:
        return {"_key": None, "_weights": None, "_matmuls": []}
