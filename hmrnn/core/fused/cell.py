"""One cell of the hand-written loop, forward and backward, on preallocated buffers (model.md §1).

Gate columns are in the loop's order i, f, o, g, z with the g columns doubled
(:mod:`hmrnn.core.fused.weights`). The COPY / UPDATE / FLUSH masks are those of
:mod:`hmrnn.core.hmlstm`: flush = z_{t-1}, update = (1 - flush) z_in, copy = (1 - flush)(1 - z_in).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from hmrnn.core.boundary import (
    STEP,
    BernoulliEstimator,
    BoundaryEstimator,
    SoftEstimator,
    StepEstimator,
)
from hmrnn.core.fused import native
from hmrnn.core.fused.ln_cell import norm_c_backward, norm_c_forward

if TYPE_CHECKING:
    from hmrnn.core.hmlstm import HMLSTM

CellBuffers = tuple[Tensor, Tensor, Tensor, Tensor]
"""Where a cell writes, each (M, ...): its gates (M, G: i, f, o, g activated, then the raw s_z),
c_t, tanh(c_t) and h_t (M, H)."""


@dataclass(frozen=True)
class LoopSpec:
    """What the loop needs to know about the module (plain values, no parameters)."""

    K: int
    H: int
    detector: tuple[bool, ...]  # per layer: computes a boundary z
    top_down: tuple[bool, ...]  # per layer: reads the layer above
    estimator: BoundaryEstimator
    training: bool
    grad_through_ops: bool
    slope: float
    skip_copy: bool  # COPY rows may be left out (see Loop.sparse_allowed)
    layer_norm: bool = False  # projections normalised separately, tanh of the normalised c
    hierarchical: bool = True  # False: an LSTM stack (every layer updates, nothing gated)
    native: bool = False  # a fused cell (C++ or Triton: hmrnn.core.fused.native) does the
    # element-wise work
    triton: bool = False  # that cell is Triton's (hmrnn.core.fused.triton_cell), not C++
    sample_mode: int = 0  # the C++ cell's z: 0 the estimator's sample(), 1 step, 2 soft
    grad_mode: int = 0  # its d z: 0 the estimator's grad(), 1 straight-through, 2 soft
    mm_dtype: torch.dtype | None = None  # under autocast: the multiplies' dtype (bf16); the
    # state, the cell's arithmetic and the gradients stay in the input's dtype
    detector_input_grad: bool = True  # False: the z rows pass no gradient to their inputs
    slope_tensor: Tensor | None = field(default=None, compare=False, repr=False)  # the
    # module's slope buffer: the Triton cell reads it on the device (CUDA graphs see updates)

    @classmethod
    def of(
        cls,
        rnn: HMLSTM,
        training: bool,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> LoopSpec:
        """``rnn``'s settings; its estimator is looked up once, here; the C++ cell serves CPU
        tensors in float32 and float64 where it can be built."""
        K = rnn.num_layers
        estimator = rnn.estimator
        modes = native_modes(
            estimator, training, device, dtype or rnn.slope.dtype, getattr(rnn, "native", True)
        )
        # row counts would synchronise a GPU at every step (the Triton cell is the GPU's path,
        # also where it runs interpreted); random draws must match the dense path's, which
        # draws for every row at once
        skip_copy = (
            rnn.skip_copy
            and (device is None or device.type == "cpu")
            and not modes.get("triton", False)
            and not estimator.is_random(training)
        )
        return cls(
            K=K,
            H=rnn.hidden_size,
            detector=tuple(rnn.has_detector(l) for l in range(K)),
            top_down=tuple(rnn.has_top_down(l) for l in range(K)),
            estimator=estimator,
            training=training,
            grad_through_ops=rnn.grad_through_ops,
            slope=rnn.slope_value(),
            detector_input_grad=rnn.detector_input_grad,
            skip_copy=skip_copy,
            layer_norm=rnn.layer_norm,
            slope_tensor=rnn.slope if modes.get("triton", False) else None,
            **modes,
        )

    @classmethod
    def lstm(
        cls,
        K: int,
        H: int,
        training: bool,
        device: torch.device,
        dtype: torch.dtype,
        allow_native: bool | str = True,
    ) -> LoopSpec:
        """The LN-LSTM stack (:class:`hmrnn.core.lstm.StackedLSTM`): the HM-LSTM's loop with
        every layer updating (no boundaries, no top-down input)."""
        return cls(
            K=K,
            H=H,
            detector=(False,) * K,
            top_down=(False,) * K,
            estimator=STEP,
            training=training,
            grad_through_ops=False,
            slope=1.0,
            skip_copy=False,
            layer_norm=True,
            hierarchical=False,
            **native_modes(STEP, training, device, dtype, allow_native),
        )


NATIVE_CHOICES = (True, False, "cpp", "triton")
"""The values of ``HMLSTM.native`` (and ``StackedLSTM.native``): True the fused cell of the
device (C++ on CPU, Triton on CUDA), False torch operations, or one of the two by name."""


def native_modes(
    estimator: BoundaryEstimator,
    training: bool,
    device: torch.device | None,
    dtype: torch.dtype,
    allow: bool | str = True,
) -> dict[str, Any]:
    """LoopSpec's ``native``, ``triton``, ``sample_mode`` and ``grad_mode`` for the module's
    ``native`` setting (``allow``, one of :data:`NATIVE_CHOICES`): the built-in estimators'
    rules are written into the fused cells; any other estimator's sample() and grad() are called
    from Python around them."""
    if allow not in NATIVE_CHOICES or not isinstance(allow, (bool, str)):
        raise ValueError(
            f"native must be one of True, False, 'cpp', 'triton', not {allow!r}: set the "
            "module's `native` attribute to one of them"
        )
    device = device or torch.device("cpu")
    use_triton = allow == "triton" or (allow is True and device.type == "cuda")
    if allow is False:
        return {"native": False}
    if use_triton:
        if not native.triton_usable(device, dtype, required=allow == "triton"):
            return {"native": False}
    elif not native.usable(device, dtype):
        return {"native": False}
    kind = type(estimator)
    sample = 0
    if kind.sample is StepEstimator.sample or (
        kind.sample is BernoulliEstimator.sample and not training
    ):
        sample = 1
    elif kind.sample is SoftEstimator.sample:
        sample = 2
    grad = {StepEstimator.grad: 1, SoftEstimator.grad: 2}.get(kind.grad, 0)
    return {"native": True, "triton": use_triton, "sample_mode": sample, "grad_mode": grad}


@dataclass
class NormC:
    """Layer norm of c_t for one cell: its gain and bias (H,), the statistics (M, 2: mean,
    rstd) the forward writes, and for the backward c_t (M, H) and the gradients of the gain and
    bias (H,) it adds to."""

    gain: Tensor
    bias: Tensor
    stats: Tensor
    c: Tensor | None = None
    g_gain: Tensor | None = None
    g_bias: Tensor | None = None


def masks(flush: Tensor | None, z_in: Tensor) -> tuple[Tensor, Tensor]:
    """(update, copy), each (B, 1), for a layer above the first."""
    if flush is None:
        return z_in, 1.0 - z_in
    keep = 1.0 - flush
    return keep * z_in, keep * (1.0 - z_in)


def cell_forward(
    spec: LoopSpec,
    l: int,
    s: Tensor,
    c_prev: Tensor,
    h_prev: Tensor,
    flush: Tensor | None,
    z_in: Tensor | None,
    out: CellBuffers,
    norm: NormC | None = None,
) -> Tensor | None:
    """One cell of layer l from its pre-activation s (M, G): writes ``out`` and returns z_t
    (M, 1), or None without a detector. ``flush`` is z_{t-1} (None without a detector), ``z_in``
    the layer below's z_t (None for layer 0, and for every layer of an LSTM). With layer norm
    (``norm``) tanh reads the normalised c_t, and ``norm.stats`` gets its statistics."""
    H = spec.H
    gates, c_new, tc, h_new = out
    i, f, o, g = (gates[:, j * H : (j + 1) * H] for j in range(4))
    z_new = None
    if spec.detector[l]:
        z_new = spec.estimator.sample(s[:, 4 * H :], spec.slope, spec.training)
    activate(spec, s, gates)
    ig = i * g
    if z_in is None:  # layer 0 never copies; FLUSH drops f * c_{t-1}
        fc = f * c_prev
        if flush is not None:
            fc.mul_(1.0 - flush)
        torch.add(fc, ig, out=c_new)
        _squash(c_new, tc, norm)
        torch.mul(o, tc, out=h_new)
    else:
        update, copy = masks(flush, z_in)
        act = 1.0 - copy
        torch.addcmul(torch.addcmul(copy * c_prev, update, f * c_prev), act, ig, out=c_new)
        _squash(c_new, tc, norm)
        torch.addcmul(copy * h_prev, act, o * tc, out=h_new)
    return z_new


def activate(spec: LoopSpec, s: Tensor, gates: Tensor) -> None:
    """The gate activations from s (M, G) into ``gates``: one sigmoid, g = 2 sigmoid - 1 (its
    columns are doubled), then the raw s_z, if any (``s`` may be ``gates`` itself)."""
    H = spec.H
    torch.sigmoid(s[:, : 4 * H], out=gates[:, : 4 * H])
    gates[:, 3 * H : 4 * H].mul_(2.0).sub_(1.0)  # tanh of the unscaled s_g
    if s.size(1) > 4 * H:
        gates[:, 4 * H :].copy_(s[:, 4 * H :])


def _squash(c: Tensor, tc: Tensor, norm: NormC | None) -> None:
    """tc = tanh(c), or tanh of the layer-normalised c."""
    if norm is None:
        torch.tanh(c, out=tc)
    else:
        norm_c_forward(c, norm.gain, norm.bias, tc, norm.stats)


def _tanh_backward(g_tc: Tensor, tc: Tensor, norm: NormC | None) -> Tensor:
    """d loss / d c_t through tc from d loss / d tc."""
    if norm is None:
        return g_tc * (1.0 - tc * tc)
    assert norm.c is not None and norm.g_gain is not None and norm.g_bias is not None
    return norm_c_backward(g_tc, tc, norm.c, norm.stats, norm.gain, norm.g_gain, norm.g_bias)


CellGrads = tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]
"""What :func:`cell_backward` returns: d c_{t-1}; the part of d h_{t-1} that bypasses the
multiply (COPY rows), None for layer 0; d z_in and d flush (M, 1), None unless the gradient flows
through the operation masks."""


def cell_backward(
    spec: LoopSpec,
    gates: Tensor,
    tc: Tensor,
    c_prev: Tensor,
    h_prev: Tensor,
    flush: Tensor | None,
    z_in: Tensor | None,
    g_h: Tensor,
    g_c: Tensor,
    ds: Tensor,
    norm: NormC | None = None,
) -> CellGrads:
    """Backward of one cell's gates: fills the gate columns of ``ds`` (M, G), d loss / d s, from
    d h_t and d c_t (``g_h``, ``g_c``); the z column is :func:`boundary_backward`'s. With layer
    norm ``norm`` holds c_t and its statistics, and takes the gradients of its gain and bias."""
    if z_in is None:
        return _first_layer_backward(spec, gates, tc, c_prev, flush, g_h, g_c, ds, norm)
    return _upper_layer_backward(spec, gates, tc, c_prev, h_prev, flush, z_in, g_h, g_c, ds, norm)


def _first_layer_backward(
    spec: LoopSpec,
    gates: Tensor,
    tc: Tensor,
    c_prev: Tensor,
    flush: Tensor | None,
    g_h: Tensor,
    g_c: Tensor,
    ds: Tensor,
    norm: NormC | None,
) -> CellGrads:
    """h = o tanh(c), c = (1 - flush) f c_prev + i g."""
    H = spec.H
    i, f, o, g = (gates[:, j * H : (j + 1) * H] for j in range(4))
    d_i, d_f, d_o, d_g = (ds[:, j * H : (j + 1) * H] for j in range(4))
    g_flush = None
    torch.mul(g_h * tc, o * (1.0 - o), out=d_o)
    g_ct = g_c + _tanh_backward(g_h * o, tc, norm)
    keep = f if flush is None else f * (1.0 - flush)
    g_c_prev = g_ct * keep
    if flush is not None and spec.grad_through_ops:
        g_flush = -(g_ct * f * c_prev).sum(1, keepdim=True)
    g_keep = g_ct * c_prev
    if flush is not None:
        g_keep = g_keep * (1.0 - flush)
    torch.mul(g_keep, f * (1.0 - f), out=d_f)
    torch.mul(g_ct * g, i * (1.0 - i), out=d_i)
    torch.mul(g_ct * i, (1.0 - g * g) * 0.5, out=d_g)  # d g / d (2 s_g)
    return g_c_prev, None, None, g_flush


def _upper_layer_backward(
    spec: LoopSpec,
    gates: Tensor,
    tc: Tensor,
    c_prev: Tensor,
    h_prev: Tensor,
    flush: Tensor | None,
    z_in: Tensor,
    g_h: Tensor,
    g_c: Tensor,
    ds: Tensor,
    norm: NormC | None,
) -> CellGrads:
    """h = copy h_prev + act o tanh(c), c = (update f + copy) c_prev + act i g."""
    H = spec.H
    i, f, o, g = (gates[:, j * H : (j + 1) * H] for j in range(4))
    d_i, d_f, d_o, d_g = (ds[:, j * H : (j + 1) * H] for j in range(4))
    g_zin = g_flush = None
    update, copy = masks(flush, z_in)
    act = 1.0 - copy
    g_act_h = g_h * act
    torch.mul(g_act_h * tc, o * (1.0 - o), out=d_o)
    g_ct = g_c + _tanh_backward(g_act_h * o, tc, norm)
    g_c_prev = g_ct * (update * f + copy)
    torch.mul(g_ct * update * c_prev, f * (1.0 - f), out=d_f)
    g_ct_act = g_ct * act
    torch.mul(g_ct_act * g, i * (1.0 - i), out=d_i)
    torch.mul(g_ct_act * i, (1.0 - g * g) * 0.5, out=d_g)
    carry = copy * g_h
    if spec.grad_through_ops:  # per row: d/d update, and d/d copy with act = 1 - copy folded in
        g_update = (g_ct * f * c_prev).sum(1, keepdim=True)
        g_copy = (g_h * (h_prev - o * tc) + g_ct * (c_prev - i * g)).sum(1, keepdim=True)
        g_zin = g_update - g_copy
        if flush is not None:
            g_zin = g_zin * (1.0 - flush)
            g_flush = -(g_update * z_in + g_copy * (1.0 - z_in))
    return g_c_prev, carry, g_zin, g_flush


def boundary_backward(
    spec: LoopSpec, gates: Tensor, z: Tensor | None, g_z: Tensor | None, ds: Tensor
) -> None:
    """Fills the z column of ``ds`` (M, G) of a layer with a detector: the estimator's gradient
    of z_t (``z``, (M, 1)) given d z_t (``g_z``); zero for imposed boundaries (``g_z`` None:
    z does not depend on s)."""
    H = spec.H
    if g_z is None or z is None:
        ds[:, 4 * H :].zero_()
    else:
        ds[:, 4 * H :] = spec.estimator.grad(gates[:, 4 * H :], spec.slope, z, g_z)


def block_inputs(
    h_prev: Tensor, z_prev: Tensor, above: Tensor | None, below: Tensor | None, z_in: Tensor | None
) -> tuple[list[Tensor], list[Tensor | None]]:
    """With layer norm, the inputs of a layer's projections (recurrent, top-down, bottom-up,
    those it has) and the gate of each (None: ungated)."""
    inputs: list[Tensor] = [h_prev]
    gates: list[Tensor | None] = [None]
    if above is not None:
        inputs.append(above)
        gates.append(z_prev)
    if below is not None:
        inputs.append(below)
        gates.append(z_in)
    return inputs, gates
