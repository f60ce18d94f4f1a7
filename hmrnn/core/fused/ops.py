"""The loop's per-step element-wise work: a fused cell where ``spec.native`` (the C++ cell on
CPU, or with ``spec.triton`` the Triton kernels of :mod:`.triton_cell`), else torch operations.

All three compute the same equations on the same buffers (:mod:`.cell`, :mod:`.ln_cell`,
``native.cpp``, :mod:`.triton_cell`, whose functions take the same arguments); the loop and its
backward call only these.
"""

from __future__ import annotations

from types import ModuleType

import torch
from torch import Tensor

from hmrnn.core.fused import cell, ln_cell, native
from hmrnn.core.fused.cell import CellBuffers, CellGrads, LoopSpec, NormC


def _fused(spec: LoopSpec) -> ModuleType:
    """The fused cell's functions: Triton's or the C++ extension's."""
    if spec.triton:
        module = native.triton_kernels()
        assert module is not None
        return module
    return native.loaded()


def gather(
    spec: LoopSpec,
    X: Tensor,
    h_prev: Tensor,
    above: Tensor | None,
    z_above: Tensor | None,
    below: Tensor | None,
    z_below: Tensor | None,
) -> None:
    """Writes the step multiply's input [h_prev, z_above above, z_below below] into ``X``
    (without layer norm; absent blocks are left out, ``z_below`` None is 1)."""
    if spec.native:
        _fused(spec).gather(X, h_prev, above, z_above, below, z_below)
        return
    H = spec.H
    X[:, :H].copy_(h_prev)
    col = H
    if above is not None:
        torch.mul(above, z_above, out=X[:, H : 2 * H])
        col = 2 * H
    if below is not None:
        if z_below is None:
            X[:, col : col + H].copy_(below)
        else:
            torch.mul(below, z_below, out=X[:, col : col + H])


def preact_forward(
    spec: LoopSpec,
    P: list[Tensor],
    gains: Tensor,
    gates: list[Tensor | None],
    add: Tensor,
    s: Tensor,
    xhat: list[Tensor],
    stats: Tensor,
) -> None:
    """:func:`hmrnn.core.fused.ln_cell.preact_forward`; ``gains`` (n, G), ``stats`` (M, >= n)."""
    if spec.native:
        _fused(spec).preact_forward(P, gains, gates, add.expand_as(s), s, xhat, stats)
    else:
        P = [p if p.dtype == s.dtype else p.to(s.dtype) for p in P]  # mixed precision
        ln_cell.preact_forward(P, list(gains.unbind(0)), gates, add, s, xhat, stats)


Preact = tuple[list[Tensor], Tensor, list[Tensor | None], Tensor, list[Tensor], Tensor]
"""With layer norm, :func:`preact_forward`'s arguments but ``s``: (P, gains, gates, add, xhat,
stats)."""

Recompute = tuple[list[Tensor], Tensor, list[Tensor | None], Tensor | None, Tensor | None]
"""With layer norm, :func:`recompute`'s first arguments: (xhat, gains, gates, add, acts)."""


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
    z_out: Tensor | None = None,
    pre: Preact | None = None,
) -> Tensor | None:
    """:func:`hmrnn.core.fused.cell.cell_forward`; the fused cells write z_t into ``z_out``
    (M, 1) when given (and return it). With ``pre`` (layer norm) s is first computed from the
    projections (:func:`preact_forward`): in the same launch for the Triton cell."""
    if pre is not None and not spec.triton:
        P, gains, gates_k, add, xhat, stats = pre
        preact_forward(spec, P, gains, gates_k, add, s, xhat, stats)
    if not spec.native:
        s = s if s.dtype == c_prev.dtype else s.to(c_prev.dtype)  # mixed precision
        return cell.cell_forward(spec, l, s, c_prev, h_prev, flush, z_in, out, norm)
    gates, c_new, tc, h_new = out
    z_new = None
    if spec.detector[l]:
        z_new = s.new_empty(s.size(0), 1) if z_out is None else z_out
    mode = spec.sample_mode if z_new is not None else 0
    gain, bias, stats = (None, None, None) if norm is None else (norm.gain, norm.bias, norm.stats)
    args = (
        s, c_prev, h_prev, flush, z_in, gates, c_new, tc, h_new, z_new if mode else None, mode,
        spec.slope, gain, bias, stats,
    )  # fmt: skip
    if spec.triton:
        if pre is not None:
            P, gains, gates_k, add, xhat, stats_p = pre
            pre = (P, gains, gates_k, add.expand_as(s), xhat, stats_p)
        _fused(spec).cell_forward(*args, pre=pre, slope_tensor=spec.slope_tensor)
    else:
        _fused(spec).cell_forward(*args)
    if z_new is not None and mode == 0:
        z_new = spec.estimator.sample(gates[:, 4 * spec.H :], spec.slope, spec.training)
    return z_new


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
    norm: NormC | None,
    z: Tensor | None,
    g_z: Tensor | None,
    g_h2: Tensor | None = None,
    again: Recompute | None = None,
) -> CellGrads:
    """:func:`hmrnn.core.fused.cell.cell_backward`, and for a layer with a detector the z column
    of ``ds`` (:func:`~hmrnn.core.fused.cell.boundary_backward`; ``g_z`` None: zero).

    ``g_h2``: a second term of d h_t (the output's gradient), added first; ``again`` (layer
    norm): :func:`recompute` first, into ``gates`` (its ``acts``, where not kept) and ``tc``.
    The Triton cell does both in the same launch."""
    detector = gates.size(1) > 4 * spec.H
    if not spec.triton:
        if g_h2 is not None:
            g_h = g_h + g_h2
        if again is not None:
            assert norm is not None
            recompute(spec, *again, norm, tc)
    if not spec.native:
        grads = cell.cell_backward(spec, gates, tc, c_prev, h_prev, flush, z_in, g_h, g_c, ds, norm)
        if detector:
            cell.boundary_backward(spec, gates, z, g_z, ds)
        return grads
    n = (None,) * 5 if norm is None else (norm.gain, norm.stats, norm.c, norm.g_gain, norm.g_bias)
    args = (
        gates, tc, c_prev, h_prev, flush, z_in, g_h, g_c, ds, spec.grad_through_ops,
        spec.grad_mode, spec.slope, g_z, *n,
    )  # fmt: skip
    if spec.triton:
        grads = _triton_cell_backward(spec, args, norm, g_h2, again, None)
    else:
        grads = _fused(spec).cell_backward(*args)
    if detector and spec.grad_mode == 0:
        cell.boundary_backward(spec, gates, z, g_z, ds)
    return grads


def _triton_cell_backward(
    spec: LoopSpec,
    args: tuple,
    norm: NormC | None,
    g_h2: Tensor | None,
    again: Recompute | None,
    preact: tuple | None,
) -> CellGrads:
    """The Triton cell's backward with the C++ cell's arguments ``args`` and its extras."""
    if again is not None:
        assert norm is not None
        xhat, gains, gates_k, add, acts = again
        add = None if add is None or acts is None else add.expand_as(acts)
        again = (xhat, gains, gates_k, add, acts)
    bias = None if norm is None else norm.bias
    return _fused(spec).cell_backward(
        *args, g_h2=g_h2, recompute=again, norm_bias=bias, slope_tensor=spec.slope_tensor,
        preact=preact,
    )  # fmt: skip


def normed_cell_backward(
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
    norm: NormC,
    z: Tensor | None,
    g_z: Tensor | None,
    g_h2: Tensor | None,
    again: Recompute,
    stats: Tensor,
    g_gains: Tensor,
    g_P: list[Tensor],
    g_bias: Tensor | None,
) -> tuple[CellGrads, list[Tensor | None]]:
    """With layer norm, :func:`cell_backward` (recomputing ``again`` first) and then
    :func:`preact_backward` (``xhat``, ``gains`` and ``gates`` from ``again``); returns the
    cell's gradients and d loss / d gate_k. The Triton cell does both in two launches (the rows,
    then the sums over rows), where the z column of ``ds`` is its own to write."""
    xhat, gains, gates_k = again[0], again[1], again[2]
    own_z = gates.size(1) == 4 * spec.H or spec.grad_mode != 0
    if not (spec.triton and own_z):
        grads = cell_backward(
            spec, gates, tc, c_prev, h_prev, flush, z_in, g_h, g_c, ds, norm, z, g_z, g_h2,
            again,
        )  # fmt: skip
        g_gates = preact_backward(spec, ds, xhat, stats, gains, gates_k, g_gains, g_P, g_bias)
        return grads, g_gates
    n = (norm.gain, norm.stats, norm.c, norm.g_gain, norm.g_bias)
    args = (
        gates, tc, c_prev, h_prev, flush, z_in, g_h, g_c, ds, spec.grad_through_ops,
        spec.grad_mode, spec.slope, g_z, *n,
    )  # fmt: skip
    g_gates: list[Tensor | None] = []
    preact = (stats, g_gains, g_P, g_bias, g_gates)
    return _triton_cell_backward(spec, args, norm, g_h2, again, preact), g_gates


def preact_backward(
    spec: LoopSpec,
    ds: Tensor,
    xhat: list[Tensor],
    stats: Tensor,
    gains: Tensor,
    gates: list[Tensor | None],
    g_gains: Tensor,
    g_P: list[Tensor],
    g_bias: Tensor | None = None,
) -> list[Tensor | None]:
    """:func:`hmrnn.core.fused.ln_cell.preact_backward`; ``gains`` and ``g_gains`` (n, G); with
    ``g_bias`` (G,) also adds the sum of ``ds`` over rows to it (the Triton cell in the same
    launch as the gains' gradients)."""
    if spec.triton:
        return _fused(spec).preact_backward(ds, xhat, stats, gains, gates, g_gains, g_P, g_bias)
    if g_bias is not None:
        g_bias.add_(ds.sum(0))
    if spec.native:
        return _fused(spec).preact_backward(ds, xhat, stats, gains, gates, g_gains, g_P)
    return ln_cell.preact_backward(
        ds, xhat, stats, list(gains.unbind(0)), gates, list(g_gains.unbind(0)), g_P
    )


def scatter(
    spec: LoopSpec,
    l: int,
    gx: list[Tensor],
    carry: Tensor | None,
    g_h: list[Tensor],
    g_z: list[Tensor],
    h_above: Tensor | None,
    h_below: Tensor | None,
    z_prev: Tensor,
    z_in: Tensor | None,
    g_zin: Tensor | None,
    g_flush: Tensor | None,
    g_gates: list[Tensor | None] | None = None,
) -> None:
    """After layer l's backward multiply: from ``gx`` (d loss / d each input block, (M, H):
    recurrent, top-down, bottom-up, those the layer has; for the C++ cell also one (M, n H)
    tensor of them side by side) sets ``g_h[l]`` (d h_{t-1}, with the
    COPY rows' ``carry``), adds to ``g_h[l + 1]`` and ``g_h[l - 1]``, adds d z_t^{l-1} to
    ``g_z[l - 1]`` and sets ``g_z[l]`` (d z_{t-1}^l).

    Without layer norm the inputs were gated before the multiply, so the gates' gradients are
    sums over gx here; with layer norm they come from the projections' backward (``g_gates``).
    The C++ cell writes ``g_h`` and ``g_z`` in place (the backward's own tensors).
    """
    above, below = spec.top_down[l], l > 0
    gated = not spec.layer_norm
    g_td = g_gates[1] if g_gates is not None and above else None
    g_ih = g_gates[-1] if g_gates is not None and below else None
    if spec.native:
        g_zprev = _fused(spec).scatter(
            gx, carry, g_h[l], g_h[l + 1] if above else None, h_above,
            g_h[l - 1] if below else None, h_below, z_prev, z_in,
            g_z[l - 1] if below and z_in is not None else None, g_zin, g_flush, g_td, g_ih, gated,
        )  # fmt: skip
        g_z[l] = torch.zeros_like(g_z[l]) if g_zprev is None else g_zprev
        return
    if gx[0].dtype != g_h[l].dtype:  # mixed precision: the multiply's dtype
        gx = [g.to(g_h[l].dtype) for g in gx]
    g_h[l] = gx[0] if carry is None else gx[0] + carry
    g_zprev = g_flush
    if above:
        if gated:
            g_h[l + 1] = torch.addcmul(g_h[l + 1], gx[1], z_prev)
            g_td = (gx[1] * h_above).sum(1, keepdim=True)
        else:
            g_h[l + 1] = g_h[l + 1] + gx[1]
        g_zprev = g_td if g_zprev is None else g_zprev + g_td
    if below:
        if gated and z_in is not None:
            g_h[l - 1] = torch.addcmul(g_h[l - 1], gx[-1], z_in)
            g_ih = (gx[-1] * h_below).sum(1, keepdim=True)
        else:
            g_h[l - 1] = g_h[l - 1] + gx[-1]
        if z_in is not None and g_ih is not None:
            g_z[l - 1] = g_z[l - 1] + (g_ih if g_zin is None else g_ih + g_zin)
    g_z[l] = torch.zeros_like(g_z[l]) if g_zprev is None else g_zprev


def recompute(
    spec: LoopSpec,
    xhat: list[Tensor],
    gains: Tensor,
    gates: list[Tensor | None],
    add: Tensor | None,
    acts: Tensor | None,
    norm: NormC,
    tc: Tensor,
) -> None:
    """With layer norm, what the forward did not keep, by the forward's own arithmetic: the gate
    activations into ``acts`` (M, G) from the normalised projections (when ``acts`` is given;
    ``add`` is the bias), and tanh of the normalised c_t (``norm.c``) into ``tc``."""
    assert norm.c is not None
    if spec.native:
        add = None if add is None or acts is None else add.expand_as(acts)
        _fused(spec).recompute(
            xhat, gains, gates, add, acts, norm.c, norm.stats, norm.gain, norm.bias, tc
        )
        return
    if acts is not None and add is not None:
        s = torch.empty_like(acts)
        ln_cell.preact_sum(xhat, list(gains.unbind(0)), gates, add, s)
        cell.activate(spec, s, acts)
    mean, rstd = norm.stats[:, :1], norm.stats[:, 1:]
    torch.tanh(torch.addcmul(norm.bias, (norm.c - mean) * rstd, norm.gain), out=tc)
