"""The HM-LSTM's fast path: one loop over the sequence, written by hand.

:class:`HMLSTM` runs this (the equations of model.md §1, with or without the layer norm of
§4), and so does the LN-LSTM baseline (:class:`hmrnn.core.StackedLSTM` with layer norm: every
layer updating). Compared with building the sequence out of autograd operations it

- computes the backward pass through time by hand (an autograd Function over the whole
  sequence, :mod:`.backward`): no autograd graph of ~40 nodes per layer and step, only the
  tensors the backward needs are kept, in (T, B, ...) buffers reused from pass to pass
  (:mod:`.loop`, :mod:`.pool`); with layer norm the gates of layers above the first and
  tanh(c_t) are recomputed in the backward instead of kept;
- does each step's element-wise work (gates, masks, the normalisations, c, h, the boundary, and
  their backward) in a few calls of a C++ extension built on first use (:mod:`.native`, with the
  same functions in torch operations as its fallback: :mod:`.cell`, :mod:`.ln_cell`), chosen in
  :mod:`.ops`;
- multiplies with oneDNN and weights packed once per call (float32 on CPU), 1.2-1.5x faster than
  the default GEMM for the per-step shapes (docs/performance.md), both forward (x W^T) and for the
  input gradients (ds W) (:mod:`.weights`);
- computes the weight gradients in one multiply per layer (and projection) for all steps, or
  for chunks of steps where the buffers would be large (:data:`.backward.WEIGHT_GRAD_ROWS`);
- orders the gate rows i, f, o, g, z internally, so one sigmoid covers all four gates;
- skips the work of COPY rows (``HMLSTM.skip_copy``, :mod:`.skipping`): their h and c are
  copied and only their boundary is computed; without autograd always, and there the gated
  top-down and bottom-up blocks also multiply only the rows whose gate is open; in training with
  imposed boundaries (nothing needs a COPY row's gates then, no layer norm), forward and
  backward. Rows are gathered only when few enough of them work (:data:`.skipping.SPARSE_BELOW`).
  See :meth:`.loop.Loop.sparse_allowed`.

The boundary z and its gradient come from the module's estimator
(:class:`hmrnn.core.boundary.BoundaryEstimator`), the object the autograd path calls too. The
oracle is :func:`hmrnn.core.reference.reference_forward` (tests/core/test_reference.py and
tests/core/test_fused.py); the COPY / UPDATE / FLUSH masks are the same as in
:mod:`hmrnn.core.hmlstm`.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import replace
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx

from hmrnn.core.fused.backward import Backward
from hmrnn.core.fused.cell import LoopSpec
from hmrnn.core.fused.loop import Loop
from hmrnn.core.fused.weights import (
    LoopWeights,
    StepMatmul,
    WeightCache,
    loop_weights,
    module_loop_weights,
    step_matmuls,
)

if TYPE_CHECKING:
    from hmrnn.core.hmlstm import HMLSTM, HMLSTMState
    from hmrnn.core.lstm import StackedLSTM

PACK_FROM = 8
"""With autograd, weights are packed for oneDNN only for sequences of at least this many steps
(packing costs about as much as a few steps' multiplies)."""

LoopOutputs = tuple[Tensor, Tensor, Tensor, Tensor, Tensor]
"""output (T, B, K, H), h (K, B, H), c (K, B, H), z (K, B), boundaries (T, B, K)."""


class _Sequence(torch.autograd.Function):
    """The whole sequence as one autograd node: the loop keeps its buffers, the backward walks
    them in reverse. ``params``: :meth:`~hmrnn.core.fused.weights.LoopWeights.flat`, the step
    weights, the biases of layers 1..K-1 and with layer norm the gains, in the loop's order."""

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
        (T, B, _) = bottom_up.shape
        weights, biases, gains, norm_c = LoopWeights.unflat(spec.K, spec.layer_norm, params)
        matmuls = step_matmuls(
            weights, B, pack=T >= PACK_FROM, dtype=spec.mm_dtype, cut_z=_cut_z(spec)
        )
        norm = None if gains is None or norm_c is None else (gains, norm_c)
        loop = Loop(spec, bottom_up, (h0, c0, z0), imposed, matmuls, biases, keep=True, norm=norm)
        loop.run()
        for layer in matmuls:  # the backward multiplies by the transposed weights alone
            for mm in layer:
                mm.drop_forward()
        ctx.loop = loop
        ctx.set_materialize_grads(False)  # an output not used gets None, not a tensor of zeros
        output, *rest = loop.outputs()
        # the loop reads its h buffers (views of output) in the backward: output leaves as an
        # alias without the loop's references to it (a returned tensor held by ctx would make a
        # reference cycle through autograd that Python never collects), sharing its version
        # counter, so that an in-place change of it is caught as autograd catches it
        ctx.output_version = output._version
        return (output.detach(), *rest)

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
        if loop.output._version != ctx.output_version:
            raise RuntimeError(
                "the HM-LSTM's output was modified by an in-place operation after the forward "
                "pass, and the backward reads it: use an out-of-place operation (e.g. "
                "nn.Dropout(inplace=False)) or clone the output first"
            )
        g_bu, g_h0, g_c0, g_z0, grad_params = Backward(loop).run(g_out, g_h, g_c, g_z, g_bounds)
        return None, g_bu, g_h0, g_c0, g_z0, None, *grad_params


def fused_forward(
    rnn: HMLSTM, input: Tensor, state: HMLSTMState, imposed: Tensor | None
) -> LoopOutputs:
    """The HM-LSTM forward (time-major) through the fast loop.

    Returns output (T, B, K, H), h (K, B, H), c (K, B, H), z (K, B), boundaries (T, B, K).
    """
    spec = LoopSpec.of(rnn, rnn.training, input.device, input.dtype)
    if imposed is not None:
        imposed = imposed.to(input.dtype)
    return run_loop(spec, rnn, input, state, imposed)


def lstm_forward(stack: StackedLSTM, input: Tensor, state: HMLSTMState) -> LoopOutputs:
    """The LN-LSTM stack's forward (time-major) through the same loop (every layer updates)."""
    spec = LoopSpec.lstm(
        stack.num_layers,
        stack.hidden_size,
        stack.training,
        input.device,
        input.dtype,
        getattr(stack, "native", True),
    )
    return run_loop(spec, stack, input, state, None)


def run_loop(
    spec: LoopSpec,
    rnn: HMLSTM | StackedLSTM,
    input: Tensor,
    state: HMLSTMState,
    imposed: Tensor | None,
) -> LoopOutputs:
    """The loop over ``input`` (T, B, H_in) from ``state`` with ``rnn``'s weights: one autograd
    node when a gradient is wanted, else a plain pass with the cached weights.

    Under autocast (``torch.autocast``, Lightning's ``precision="bf16-mixed"``) the loop's
    multiplies run in autocast's dtype (weights cast once per call, inputs by the gather), and
    everything else (the state, the cell's arithmetic, the outputs and the gradients) in the
    input's dtype; the loop itself runs with autocast off."""
    device_type = input.device.type
    low = None
    if torch.is_autocast_enabled(device_type) and input.dtype == torch.float32:
        low = torch.get_autocast_dtype(device_type)
        # the C++ cell reads one dtype; COPY skipping gathers rows (CPU speed-ups both: mixed
        # precision is for GPUs, where the Triton cell converts on load)
        spec = replace(spec, mm_dtype=low, native=spec.triton, skip_copy=False)
    tensors = (input, *state, *rnn.parameters())
    if torch.is_grad_enabled() and any(x.requires_grad for x in tensors):
        weights = module_loop_weights(rnn, input.device)
        args = (state.h, state.c, state.z, imposed, *weights.flat())
        bottom_up = _mm_dtype(weights.bottom_up(input, cut_z=_cut_z(spec)[0]), spec)
        with _autocast_off(device_type, low):
            return _Sequence.apply(spec, bottom_up, *args)

    # no gradient wanted: the weights in loop order (and packed) are kept while they are unchanged
    weights, matmuls = rnn.fused_weights.get(rnn, input)
    if low is not None:
        matmuls = step_matmuls(weights.step_weights, input.size(1), pack=False, dtype=low)
    norm = None
    if weights.gains is not None and weights.norm_c is not None:
        norm = (weights.gains, weights.norm_c)
    bottom_up = _mm_dtype(weights.bottom_up(input), spec)
    with _autocast_off(device_type, low):
        loop = Loop(spec, bottom_up, state, imposed, matmuls, weights.biases, False, norm)
        loop.run()
        return loop.outputs()


def _cut_z(spec: LoopSpec) -> list[bool]:
    """Per layer: whether its z row passes no gradient to its inputs
    (``detector_input_grad=False`` and a detector)."""
    return [d and not spec.detector_input_grad for d in spec.detector]


def _autocast_off(device_type: str, low: torch.dtype | None) -> AbstractContextManager:
    """Autocast turned off inside the loop where it was on (``low``), else nothing."""
    return nullcontext() if low is None else torch.autocast(device_type, enabled=False)


def _mm_dtype(bottom_up: Tensor, spec: LoopSpec) -> Tensor:
    """Layer 0's bottom-up term as its step multiply adds it: in the multiplies' dtype (mixed
    precision, without layer norm, where it is the multiply's addend)."""
    if spec.mm_dtype is None or spec.layer_norm:
        return bottom_up
    return bottom_up.to(spec.mm_dtype)


__all__ = [
    "PACK_FROM",
    "Backward",
    "Loop",
    "LoopSpec",
    "StepMatmul",
    "WeightCache",
    "fused_forward",
    "loop_weights",
    "lstm_forward",
    "step_matmuls",
]
