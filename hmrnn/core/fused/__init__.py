"""The HM-LSTM's fast path without layer norm: one loop over the sequence, written by hand.

:class:`HMLSTM` runs this for ``layer_norm=False`` (the equations of model.md §1 without the
normalisation). Compared with building the sequence out of autograd operations it

- computes the backward pass through time by hand (an autograd Function over the whole
  sequence, :mod:`.backward`): no autograd graph of ~40 nodes per layer and step, only the
  tensors the backward needs are kept, in preallocated (T, B, ...) buffers (:mod:`.loop`);
- multiplies with oneDNN and weights packed once per call (float32 on CPU), 1.2-1.5x faster than
  the default GEMM for the per-step shapes (docs/performance.md), both forward (x W^T) and for the
  input gradients (ds W) (:mod:`.weights`);
- computes the weight gradients of all steps in one multiply per layer;
- orders the gate rows i, f, o, g, z internally, so one sigmoid covers all four gates;
- skips the work of COPY rows (``HMLSTM.skip_copy``): their h and c are copied and only their
  boundary is computed; without autograd always, and there the gated top-down and bottom-up
  blocks also multiply only the rows whose gate is open; in training with imposed boundaries
  (nothing needs a COPY row's gates then), forward and backward. Rows are gathered only when few
  enough of them work (:data:`.loop.SPARSE_BELOW`). See :meth:`.loop.Loop.sparse_allowed`.

The boundary z and its gradient come from the module's estimator
(:class:`hmrnn.core.boundary.BoundaryEstimator`), the object the autograd path calls too. The
oracle is :func:`hmrnn.core.reference.reference_forward` (tests/core/test_reference.py and
tests/core/test_fused.py); the COPY / UPDATE / FLUSH masks are the same as in
:mod:`hmrnn.core.hmlstm`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx

from hmrnn.core.fused.backward import Backward, LoopGrads
from hmrnn.core.fused.cell import LoopSpec
from hmrnn.core.fused.loop import Loop
from hmrnn.core.fused.weights import StepMatmul, WeightCache, loop_weights

if TYPE_CHECKING:
    from hmrnn.core.hmlstm import HMLSTM, HMLSTMState

PACK_FROM = 8
"""With autograd, weights are packed for oneDNN only for sequences of at least this many steps
(packing costs about as much as a few steps' multiplies)."""

LoopOutputs = tuple[Tensor, Tensor, Tensor, Tensor, Tensor]
"""output (T, B, K, H), h (K, B, H), c (K, B, H), z (K, B), boundaries (T, B, K)."""


class _Sequence(torch.autograd.Function):
    """The whole sequence as one autograd node: the loop keeps its buffers, the backward walks
    them in reverse. ``params``: the K step weights, then the biases of layers 1..K-1, in the
    loop's order (:class:`~hmrnn.core.fused.weights.LoopWeights`)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: FunctionCtx,
        spec: LoopSpec,
        bottom_up: Tensor,
        h0: Tensor,
        c0: Tensor,
        z0: Tensor,
        imposed: Tensor | None,
        *params: Tensor,
    ) -> LoopOutputs:
        K, (T, B, _) = spec.K, bottom_up.shape
        matmuls = [StepMatmul(w, B, pack=T >= PACK_FROM) for w in params[:K]]
        loop = Loop(spec, bottom_up, (h0, c0, z0), imposed, matmuls, list(params[K:]), keep=True)
        loop.run()
        ctx.loop = loop
        return loop.outputs()

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: FunctionCtx,
        g_out: Tensor | None,
        g_h: Tensor | None,
        g_c: Tensor | None,
        g_z: Tensor | None,
        g_bounds: Tensor | None,
    ) -> tuple[Tensor | None, ...]:
        loop = ctx.loop  # kept (not deleted) so that backward can run again with retain_graph
        grads: LoopGrads = Backward(loop).run(g_out, g_h, g_c, g_z, g_bounds)
        g_bu, g_h0, g_c0, g_z0, grad_w, grad_b = grads
        return None, g_bu, g_h0, g_c0, g_z0, None, *grad_w, *grad_b


def fused_forward(
    rnn: HMLSTM, input: Tensor, state: HMLSTMState, imposed: Tensor | None
) -> LoopOutputs:
    """The HM-LSTM forward (time-major, no layer norm) through the fast loop.

    Returns output (T, B, K, H), h (K, B, H), c (K, B, H), z (K, B), boundaries (T, B, K).
    """
    spec = LoopSpec.of(rnn, rnn.training, input.device)
    if imposed is not None:
        imposed = imposed.to(input.dtype)
    tensors = (input, *state, *rnn.parameters())
    if torch.is_grad_enabled() and any(x.requires_grad for x in tensors):
        weights = loop_weights(rnn, input.device)
        args = (state.h, state.c, state.z, imposed, *weights.step_weights, *weights.biases)
        return _Sequence.apply(spec, weights.bottom_up(input), *args)

    # no gradient wanted: the weights in loop order (and packed) are kept while they are unchanged
    weights, matmuls = rnn.fused_weights.get(rnn, input)
    loop = Loop(spec, weights.bottom_up(input), state, imposed, matmuls, weights.biases, keep=False)
    loop.run()
    return loop.outputs()


__all__ = [
    "PACK_FROM",
    "Backward",
    "Loop",
    "LoopSpec",
    "StepMatmul",
    "WeightCache",
    "fused_forward",
    "loop_weights",
]
