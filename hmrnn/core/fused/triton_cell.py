"""The fused per-step cell in Triton: the GPU's version of ``native.cpp``.

The same seven functions as the C++ cell, with the same arguments and the same arithmetic
(:mod:`hmrnn.core.fused.ops` chooses between them), each one kernel launch (two where a sum over
rows is wanted: the gradients of layer norm's gains and biases):

- :func:`gather`, :func:`preact_forward`, :func:`cell_forward` in the forward;
- :func:`recompute`, :func:`cell_backward`, :func:`preact_backward`, :func:`scatter` in the
  backward.

Beyond the C++ cell, fewer launches per layer and step (3-4 each way, the multiplies included):
:func:`cell_forward` computes layer norm's preactivation first (``pre``), :func:`cell_backward`
adds the output's gradient (``g_h2``), recomputes first (``recompute``) and goes on back through
the projections' normalisation (``preact``), with one launch for all the sums over rows.

One program per row (a batch element) holds that row's H (or G) columns in one block, so a row's
sums (layer norm's statistics, the per-row gradients of z) need no second pass over memory. The
sums over rows (gains' and biases' gradients) are a second kernel with one program per block of
columns that walks the rows in order: deterministic, unlike atomics.

Without a GPU Triton runs these kernels in its interpreter (numpy, a program at a time): this
module sets ``TRITON_INTERPRET=1`` before importing Triton where torch sees no CUDA device, so
that the tests check every kernel on a CPU machine (tests/core/test_triton.py). Compute is in
the dtype of the state (float32 or float64); loads of other dtypes (bf16 pre-activations under
autocast) are converted on load. ``tanh`` is written with ``exp`` (libdevice's is not in the
interpreter): ``sign(x) (1 - e) / (1 + e)``, ``e = exp(-2 |x|)``.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

if not torch.cuda.is_available():  # no GPU: the interpreter, or nothing would run
    os.environ.setdefault("TRITON_INTERPRET", "1")

import triton
import triton.language as tl

launches = 0
"""Kernel launches so far in this process (tests count them per layer and step)."""

_DTYPES = {torch.float32: tl.float32, torch.float64: tl.float64}


def interpreted() -> bool:
    """Whether the kernels run in Triton's interpreter (no GPU): this module's kernels and
    Triton's own library (``tl.sum``) alike, which needs TRITON_INTERPRET=1 set before Triton
    was first imported in the process."""
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(_gather_kernel, InterpretedFunction) and isinstance(
        tl.sum, InterpretedFunction
    )


def _block(n: int) -> int:
    return max(16, triton.next_power_of_2(n))


def _warps(block: int) -> int:
    return 4 if block <= 1024 else 8


def _col(t: Tensor | None, like: Tensor) -> tuple[Tensor, int]:
    """A tensor (or ``like`` as a placeholder for an absent one) and its row stride; its last
    dimension must be dense (the kernels index columns by position)."""
    if t is None:
        return like, 0
    if t.size(-1) > 1 and t.stride(-1) != 1:
        raise ValueError(f"Triton cell: strides {t.stride()}: the last dimension is not dense")
    return t, (t.stride(0) if t.dim() > 1 else 0)


def _launch(kernel, programs: int, *args, **meta) -> None:
    """One launch of ``programs`` programs (none for 0); interpreted, outside any torch dispatch
    mode (the interpreter's own torch calls must not be intercepted)."""
    global launches
    if programs == 0:
        return
    launches += 1
    if _INTERPRETED:
        from torch.utils._python_dispatch import _disable_current_modes

        with _disable_current_modes():
            kernel[(programs,)](*args, **meta)
        return
    kernel[(programs,)](*args, **meta)


# ------------------------------------------------------------------------------ element rules
@triton.jit
def _tanh(x):
    e = tl.exp(-2.0 * tl.abs(x))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(x < 0, -t, t)


@triton.jit
def _sigm(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _row_stats(x, m, n):
    """mean and rstd of a row's masked block (biased variance); rstd 0 for an all-zero row."""
    xs = tl.where(m, x, 0.0)
    mean = tl.sum(xs, axis=0) / n
    nonzero = tl.sum(tl.where(m & (x != 0.0), 1.0, 0.0), axis=0)
    d = tl.where(m, x - mean, 0.0)
    var = tl.sum(d * d, axis=0) / n
    rstd = tl.where(nonzero > 0.0, 1.0 / tl.sqrt(var + 1e-5), 0.0)  # 1e-5: autograd_step.LN_EPS
    return mean, rstd


@triton.jit
def _masks(FL, sfl, ZI, szi, r, HAS_FL: tl.constexpr, DT: tl.constexpr):
    """A row's operation masks (update, copy, act) from z_{t-1} and z_t^{l-1} (model.md §1)."""
    z_in = tl.load(ZI + r * szi).to(DT)
    if HAS_FL:
        k = 1.0 - tl.load(FL + r * sfl).to(DT)
        update = k * z_in
        copy = k * (1.0 - z_in)
    else:
        update = z_in
        copy = 1.0 - z_in
    return update, copy, 1.0 - copy


# ------------------------------------------------------------------------------------ forward
@triton.jit
def _gather_kernel(
    X, sx, HP, shp, AB, sab, ZA, sza, BE, sbe, ZB, szb, H,
    HAS_AB: tl.constexpr, HAS_BE: tl.constexpr, HAS_ZB: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    r = tl.program_id(0)
    j = tl.arange(0, BLOCK)
    m = j < H
    out = X + r * sx
    tl.store(out + j, tl.load(HP + r * shp + j, mask=m), mask=m)
    col = H
    if HAS_AB:
        z = tl.load(ZA + r * sza)
        tl.store(out + H + j, tl.load(AB + r * sab + j, mask=m) * z, mask=m)
        col = 2 * H
    if HAS_BE:
        b = tl.load(BE + r * sbe + j, mask=m)
        if HAS_ZB:
            b = b * tl.load(ZB + r * szb)
        tl.store(out + col + j, b, mask=m)


def gather(
    X: Tensor,
    h_prev: Tensor,
    above: Tensor | None,
    z_above: Tensor | None,
    below: Tensor | None,
    z_below: Tensor | None,
) -> None:
    """[h_prev, z_above above, z_below below] into ``X`` (M, n H)."""
    M, H = h_prev.shape
    ab, sab = _col(above, h_prev)
    za, sza = _col(z_above, h_prev)
    be, sbe = _col(below, h_prev)
    zb, szb = _col(z_below, h_prev)
    B = _block(H)
    _launch(
        _gather_kernel, M, X, X.stride(0), h_prev, h_prev.stride(0), ab, sab, za, sza, be, sbe,
        zb, szb, H, HAS_AB=above is not None, HAS_BE=below is not None,
        HAS_ZB=z_below is not None, BLOCK=B, num_warps=_warps(B),
    )  # fmt: skip


@triton.jit
def _norm_block(
    out, P, sp, XH, sxh, GN, GT, sgt, ST, sst, r, k, j, m, G,
    HAS_GT: tl.constexpr, DT: tl.constexpr,
):  # fmt: skip
    """One projection of a row: normalised into xhat, its rstd into stats[k], and
    gate * gain * xhat added to ``out``."""
    x = tl.load(P + r * sp + j, mask=m, other=0.0).to(DT)
    mean, rstd = _row_stats(x, m, G)
    tl.store(ST + r * sst + k, rstd)
    y = (x - mean) * rstd
    tl.store(XH + r * sxh + j, y, mask=m)
    w = tl.load(GN + k * G + j, mask=m, other=0.0).to(DT)
    if HAS_GT:  # noqa: SIM108 (a compile-time branch)
        out = out + (y * w) * tl.load(GT + r * sgt).to(DT)
    else:
        out = out + y * w
    return out


@triton.jit
def _preact_row(
    S, ss, AD, sad, GN, ST, sst, G, r,
    P0, sp0, X0, sx0, T0, st0, P1, sp1, X1, sx1, T1, st1, P2, sp2, X2, sx2, T2, st2,
    N: tl.constexpr, HT0: tl.constexpr, HT1: tl.constexpr, HT2: tl.constexpr,
    DT: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """s = add + sum_k gate_k gain_k LN(P_k) of row r into S (and xhat_k, rstd_k)."""
    j = tl.arange(0, BLOCK)
    m = j < G
    out = tl.load(AD + r * sad + j, mask=m, other=0.0).to(DT)
    out = _norm_block(out, P0, sp0, X0, sx0, GN, T0, st0, ST, sst, r, 0, j, m, G, HT0, DT)
    if N > 1:
        out = _norm_block(out, P1, sp1, X1, sx1, GN, T1, st1, ST, sst, r, 1, j, m, G, HT1, DT)
    if N > 2:
        out = _norm_block(out, P2, sp2, X2, sx2, GN, T2, st2, ST, sst, r, 2, j, m, G, HT2, DT)
    tl.store(S + r * ss + j, out, mask=m)


@triton.jit
def _preact_forward_kernel(
    S, ss, AD, sad, GN, ST, sst, G,
    P0, sp0, X0, sx0, T0, st0, P1, sp1, X1, sx1, T1, st1, P2, sp2, X2, sx2, T2, st2,
    N: tl.constexpr, HT0: tl.constexpr, HT1: tl.constexpr, HT2: tl.constexpr,
    DT: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    _preact_row(
        S, ss, AD, sad, GN, ST, sst, G, tl.program_id(0),
        P0, sp0, X0, sx0, T0, st0, P1, sp1, X1, sx1, T1, st1, P2, sp2, X2, sx2, T2, st2,
        N, HT0, HT1, HT2, DT, BLOCK,
    )  # fmt: skip


def _blocks(tensors: list[Tensor | None], like: Tensor, n: int = 3) -> list[tuple[Tensor, int]]:
    """Up to three (tensor, row stride) pairs, placeholders after the last."""
    pairs = [_col(t, like) for t in tensors]
    return pairs + [(like, 0)] * (n - len(pairs))


def _preact_args(
    P: list[Tensor],
    gains: Tensor,
    gates: list[Tensor | None],
    add: Tensor,
    s: Tensor,
    xhat: list[Tensor],
    stats: Tensor,
) -> tuple[list, dict]:
    """The arguments of :func:`_preact_row` after S, ss (and its constexprs)."""
    assert gains.is_contiguous()
    n, G = len(P), s.size(1)
    ps, xs, ts = _blocks(P, s), _blocks(xhat, s), _blocks(gates, s)
    flat = [v for k in range(3) for v in (*ps[k], *xs[k], *ts[k])]
    has = [k < n and gates[k] is not None for k in range(3)]
    args = [add, add.stride(0), gains, stats, stats.stride(0), G]
    return [*args, *flat], {"N": n, "HT0": has[0], "HT1": has[1], "HT2": has[2]}


def preact_forward(
    P: list[Tensor],
    gains: Tensor,
    gates: list[Tensor | None],
    add: Tensor,
    s: Tensor,
    xhat: list[Tensor],
    stats: Tensor,
) -> None:
    """s = add + sum_k gate_k gain_k LN(P_k), with each xhat_k and rstd_k written."""
    args, meta = _preact_args(P, gains, gates, add, s, xhat, stats)
    B = _block(s.size(1))
    _launch(
        _preact_forward_kernel, s.size(0), s, s.stride(0), *args, **meta,
        DT=_DTYPES[s.dtype], BLOCK=B, num_warps=_warps(B),
    )  # fmt: skip


@triton.jit
def _cell_forward_kernel(
    S, ss, CP, scp, HP, shp, FL, sfl, ZI, szi, GA, sga, CN, scn, TC, stc, HN, shn, ZO, szo,
    GC, BC, STC, sstc, slope, SLOPE, H,
    AD, sad, GN, ST, sst, G,
    P0, sp0, X0, sx0, T0, st0, P1, sp1, X1, sx1, T1, st1, P2, sp2, X2, sx2, T2, st2,
    DET: tl.constexpr, FIRST: tl.constexpr, HAS_FL: tl.constexpr, SAMPLE: tl.constexpr,
    NORM: tl.constexpr, DT: tl.constexpr, BLOCK: tl.constexpr,
    PRE: tl.constexpr, N: tl.constexpr, HT0: tl.constexpr, HT1: tl.constexpr,
    HT2: tl.constexpr, BLOCK_G: tl.constexpr, SLOPE_PTR: tl.constexpr,
):  # fmt: skip
    r = tl.program_id(0)
    if SLOPE_PTR:  # read on the device at each launch (a CUDA graph's replays see updates)
        slope = tl.load(SLOPE).to(DT)
    if PRE:  # layer norm: s from the projections first (written to S, read back below)
        _preact_row(
            S, ss, AD, sad, GN, ST, sst, G, r,
            P0, sp0, X0, sx0, T0, st0, P1, sp1, X1, sx1, T1, st1, P2, sp2, X2, sx2, T2, st2,
            N, HT0, HT1, HT2, DT, BLOCK_G,
        )  # fmt: skip
        tl.debug_barrier()
    j = tl.arange(0, BLOCK)
    m = j < H
    srow = S + r * ss
    i = _sigm(tl.load(srow + j, mask=m, other=0.0).to(DT))
    f = _sigm(tl.load(srow + H + j, mask=m, other=0.0).to(DT))
    o = _sigm(tl.load(srow + 2 * H + j, mask=m, other=0.0).to(DT))
    g = _sigm(tl.load(srow + 3 * H + j, mask=m, other=0.0).to(DT)) * 2.0 - 1.0
    if DET:
        sz = tl.load(srow + 4 * H).to(DT)
    grow = GA + r * sga
    tl.store(grow + j, i, mask=m)
    tl.store(grow + H + j, f, mask=m)
    tl.store(grow + 2 * H + j, o, mask=m)
    tl.store(grow + 3 * H + j, g, mask=m)
    if DET:
        tl.store(grow + 4 * H, sz)
        if SAMPLE == 1:
            tl.store(ZO + r * szo, tl.where(sz > 0.0, 1.0, 0.0))
        if SAMPLE == 2:
            tl.store(ZO + r * szo, tl.minimum(tl.maximum((slope * sz + 1.0) * 0.5, 0.0), 1.0))
    c0 = tl.load(CP + r * scp + j, mask=m, other=0.0).to(DT)
    if FIRST:
        fc = f * c0
        if HAS_FL:
            fc = fc * (1.0 - tl.load(FL + r * sfl).to(DT))
        c = fc + i * g
    else:
        update, copy, act = _masks(FL, sfl, ZI, szi, r, HAS_FL, DT)
        c = (copy * c0 + update * (f * c0)) + act * (i * g)
    c = tl.where(m, c, 0.0)
    tl.store(CN + r * scn + j, c, mask=m)
    if NORM:
        mean, rstd = _row_stats(c, m, H)
        tl.store(STC + r * sstc, mean)
        tl.store(STC + r * sstc + 1, rstd)
        gain = tl.load(GC + j, mask=m, other=0.0).to(DT)
        bias = tl.load(BC + j, mask=m, other=0.0).to(DT)
        t = _tanh(bias + ((c - mean) * rstd) * gain)
    else:
        t = _tanh(c)
    tl.store(TC + r * stc + j, t, mask=m)
    if FIRST:
        h = o * t
    else:
        h0 = tl.load(HP + r * shp + j, mask=m, other=0.0).to(DT)
        h = copy * h0 + act * (o * t)
    tl.store(HN + r * shn + j, h, mask=m)


def cell_forward(
    s: Tensor,
    c_prev: Tensor,
    h_prev: Tensor,
    flush: Tensor | None,
    z_in: Tensor | None,
    gates: Tensor,
    c_new: Tensor,
    tc: Tensor,
    h_new: Tensor,
    z_out: Tensor | None,
    sample: int,
    slope: float,
    norm_gain: Tensor | None,
    norm_bias: Tensor | None,
    norm_stats: Tensor | None,
    pre: tuple | None = None,
    slope_tensor: Tensor | None = None,
) -> None:
    """Gates, c_t, tanh(c_t) (of the normalised c_t with ``norm_gain``), h_t and, for
    ``sample`` 1 (step) or 2 (soft), z_t into ``z_out``. With ``pre`` (the arguments of
    :func:`preact_forward` but ``s``) s is first computed from the projections, in the same
    launch; ``slope_tensor``: the slope read on the device (instead of ``slope``: CUDA graphs
    replay the current value)."""
    M, H = c_prev.shape
    det = s.size(1) > 4 * H
    fl, sfl = _col(flush, s)
    zi, szi = _col(z_in, s)
    zo, szo = _col(z_out, s)
    stc_t, sstc = _col(norm_stats, s)
    if pre is not None:
        P, gains, gates_k, add, xhat, stats = pre
        pre_args, pre_meta = _preact_args(P, gains, gates_k, add, s, xhat, stats)
    else:
        pre_args = [s, 0, s, s, 0, 0, *([s, 0] * 9)]
        pre_meta = {"N": 1, "HT0": False, "HT1": False, "HT2": False}
    B, BG = _block(H), _block(s.size(1))
    _launch(
        _cell_forward_kernel, M, s, s.stride(0), c_prev, c_prev.stride(0), h_prev,
        h_prev.stride(0), fl, sfl, zi, szi, gates, gates.stride(0), c_new, c_new.stride(0), tc,
        tc.stride(0), h_new, h_new.stride(0), zo, szo,
        s if norm_gain is None else norm_gain, s if norm_bias is None else norm_bias, stc_t,
        sstc, float(slope), s if slope_tensor is None else slope_tensor, H, *pre_args, DET=det,
        FIRST=z_in is None, SLOPE_PTR=slope_tensor is not None,
        HAS_FL=flush is not None, SAMPLE=sample if (det and z_out is not None) else 0,
        NORM=norm_gain is not None, DT=_DTYPES[c_prev.dtype], BLOCK=B, PRE=pre is not None,
        **pre_meta, BLOCK_G=BG, num_warps=_warps(BG if pre is not None else B),
    )  # fmt: skip


# ----------------------------------------------------------------------------------- backward
@triton.jit
def _recompute_row(
    AD, sad, GN, AC, sac, C, sc, STC, sstc, GC, BC, TC, stc, G, H, r,
    X0, sx0, T0, st0, X1, sx1, T1, st1, X2, sx2, T2, st2,
    N: tl.constexpr, HT0: tl.constexpr, HT1: tl.constexpr, HT2: tl.constexpr,
    ACTS: tl.constexpr, DT: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """Row r's gate activations (with ``ACTS``) and tanh of its normalised c_t."""
    if ACTS:
        j = tl.arange(0, BLOCK_G)
        m = j < G
        s = tl.load(AD + r * sad + j, mask=m, other=0.0).to(DT)
        s = _add_block(s, X0, sx0, GN, T0, st0, r, 0, j, m, G, HT0, DT)
        if N > 1:
            s = _add_block(s, X1, sx1, GN, T1, st1, r, 1, j, m, G, HT1, DT)
        if N > 2:
            s = _add_block(s, X2, sx2, GN, T2, st2, r, 2, j, m, G, HT2, DT)
        a = _sigm(s)
        a = tl.where((j >= 3 * H) & (j < 4 * H), a * 2.0 - 1.0, a)
        a = tl.where(j >= 4 * H, s, a)
        tl.store(AC + r * sac + j, a, mask=m)
    k = tl.arange(0, BLOCK)
    mk = k < H
    c = tl.load(C + r * sc + k, mask=mk, other=0.0).to(DT)
    mean = tl.load(STC + r * sstc).to(DT)
    rstd = tl.load(STC + r * sstc + 1).to(DT)
    gain = tl.load(GC + k, mask=mk, other=0.0).to(DT)
    bias = tl.load(BC + k, mask=mk, other=0.0).to(DT)
    tl.store(TC + r * stc + k, _tanh(bias + ((c - mean) * rstd) * gain), mask=mk)


@triton.jit
def _recompute_kernel(
    AD, sad, GN, AC, sac, C, sc, STC, sstc, GC, BC, TC, stc, G, H,
    X0, sx0, T0, st0, X1, sx1, T1, st1, X2, sx2, T2, st2,
    N: tl.constexpr, HT0: tl.constexpr, HT1: tl.constexpr, HT2: tl.constexpr,
    ACTS: tl.constexpr, DT: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    _recompute_row(
        AD, sad, GN, AC, sac, C, sc, STC, sstc, GC, BC, TC, stc, G, H, tl.program_id(0),
        X0, sx0, T0, st0, X1, sx1, T1, st1, X2, sx2, T2, st2,
        N, HT0, HT1, HT2, ACTS, DT, BLOCK_G, BLOCK,
    )  # fmt: skip


@triton.jit
def _add_block(s, XH, sxh, GN, GT, sgt, r, k, j, m, G, HAS_GT: tl.constexpr, DT: tl.constexpr):
    y = tl.load(XH + r * sxh + j, mask=m, other=0.0).to(DT)
    w = tl.load(GN + k * G + j, mask=m, other=0.0).to(DT)
    if HAS_GT:
        return s + (y * w) * tl.load(GT + r * sgt).to(DT)
    return s + y * w


def _recompute_args(
    xhat: list[Tensor],
    gains: Tensor | None,
    gates: list[Tensor | None],
    add: Tensor | None,
    acts: Tensor | None,
    c: Tensor,
) -> tuple[list, list, dict]:
    """:func:`_recompute_row`'s arguments: those before C, the blocks after r, constexprs."""
    H = c.size(1)
    with_acts = acts is not None and add is not None and gains is not None
    G = acts.size(1) if acts is not None else 4 * H
    xs, ts = _blocks(list(xhat), c), _blocks(list(gates), c)
    flat = [v for k in range(3) for v in (*xs[k], *ts[k])]
    has = [k < len(xhat) and gates[k] is not None for k in range(3)]
    ad, sad = _col(add if with_acts else None, c)
    ac, sac = _col(acts if with_acts else None, c)
    meta = {"N": len(xhat), "HT0": has[0], "HT1": has[1], "HT2": has[2], "ACTS": with_acts}
    return [ad, sad, gains if with_acts else c, ac, sac], flat, {**meta, "BLOCK_G": _block(G)}


def recompute(
    xhat: list[Tensor],
    gains: Tensor | None,
    gates: list[Tensor | None],
    add: Tensor | None,
    acts: Tensor | None,
    c: Tensor,
    stats_c: Tensor,
    gain_c: Tensor,
    bias_c: Tensor,
    tc: Tensor,
) -> None:
    """With layer norm: the gate activations into ``acts`` (when given) from the normalised
    projections, and tanh of the normalised c_t into ``tc``."""
    M, H = c.shape
    head, flat, meta = _recompute_args(xhat, gains, gates, add, acts, c)
    B = _block(H)
    G = acts.size(1) if acts is not None else 4 * H
    _launch(
        _recompute_kernel, M, *head, c, c.stride(0), stats_c, stats_c.stride(0), gain_c,
        bias_c, tc, tc.stride(0), G, H, *flat, **meta, DT=_DTYPES[c.dtype], BLOCK=B,
        num_warps=_warps(meta["BLOCK_G"] if meta["ACTS"] else B),
    )  # fmt: skip


@triton.jit
def _cell_backward_kernel(
    GA, sga, TC, stc, CP, scp, HP, shp, FL, sfl, ZI, szi, GH, sgh, GH2, sgh2, GCI, sgci,
    DS, sds, GCP, sgcp, CA, sca, GZI, sgzi, GFL, sgfl, GZ, sgz, GN, STC, sstc, CN, scn, BC,
    slope, SLOPE, H, G, AD, sad, GNS, AC, sac,
    X0, sx0, T0, st0, X1, sx1, T1, st1, X2, sx2, T2, st2,
    ST, sst, P0, sp0, Q0, sq0, P1, sp1, Q1, sq1, P2, sp2, Q2, sq2,
    FIRST: tl.constexpr, HAS_FL: tl.constexpr, GTO: tl.constexpr, GRAD: tl.constexpr,
    DET: tl.constexpr, HAS_GZ: tl.constexpr, NORM: tl.constexpr, DT: tl.constexpr,
    BLOCK: tl.constexpr, HAS_GH2: tl.constexpr, RECOMP: tl.constexpr, N: tl.constexpr,
    HT0: tl.constexpr, HT1: tl.constexpr, HT2: tl.constexpr, ACTS: tl.constexpr,
    BLOCK_G: tl.constexpr, SLOPE_PTR: tl.constexpr, PB: tl.constexpr,
):  # fmt: skip
    r = tl.program_id(0)
    if SLOPE_PTR:
        slope = tl.load(SLOPE).to(DT)
    if RECOMP:  # layer norm: the gates (ACTS) and tanh(c_t) first, read back below
        _recompute_row(
            AD, sad, GNS, AC, sac, CN, scn, STC, sstc, GN, BC, TC, stc, G, H, r,
            X0, sx0, T0, st0, X1, sx1, T1, st1, X2, sx2, T2, st2,
            N, HT0, HT1, HT2, ACTS, DT, BLOCK_G, BLOCK,
        )  # fmt: skip
        tl.debug_barrier()
    j = tl.arange(0, BLOCK)
    m = j < H
    grow = GA + r * sga
    i = tl.load(grow + j, mask=m, other=0.0).to(DT)
    f = tl.load(grow + H + j, mask=m, other=0.0).to(DT)
    o = tl.load(grow + 2 * H + j, mask=m, other=0.0).to(DT)
    g = tl.load(grow + 3 * H + j, mask=m, other=0.0).to(DT)
    t = tl.load(TC + r * stc + j, mask=m, other=0.0).to(DT)
    c0 = tl.load(CP + r * scp + j, mask=m, other=0.0).to(DT)
    dh = tl.load(GH + r * sgh + j, mask=m, other=0.0).to(DT)
    if HAS_GH2:
        dh = dh + tl.load(GH2 + r * sgh2 + j, mask=m, other=0.0).to(DT)
    dc = tl.load(GCI + r * sgci + j, mask=m, other=0.0).to(DT)
    if FIRST:
        gah = dh
    else:
        update, copy, act = _masks(FL, sfl, ZI, szi, r, HAS_FL, DT)
        gah = dh * act
    drow = DS + r * sds
    tl.store(drow + 2 * H + j, (gah * t) * (o * (1.0 - o)), mask=m)
    gct = (gah * o) * (1.0 - t * t)
    if NORM:
        mean = tl.load(STC + r * sstc).to(DT)
        rstd = tl.load(STC + r * sstc + 1).to(DT)
        cn = tl.load(CN + r * scn + j, mask=m, other=0.0).to(DT)
        dy = gct * tl.load(GN + j, mask=m, other=0.0).to(DT)
        chat = (cn - mean) * rstd
        m1 = tl.sum(tl.where(m, dy, 0.0), axis=0) / H
        m2 = tl.sum(tl.where(m, dy * chat, 0.0), axis=0) / H
        gct = dc + ((dy - m1) - chat * m2) * rstd
    else:
        gct = dc + gct
    gct = tl.where(m, gct, 0.0)
    if FIRST:
        if HAS_FL:
            keep = 1.0 - tl.load(FL + r * sfl).to(DT)
            tl.store(GCP + r * sgcp + j, gct * (f * keep), mask=m)
            g_keep = gct * c0 * keep
            if GTO:
                tl.store(GFL + r * sgfl, -tl.sum(gct * f * c0, axis=0))
        else:
            tl.store(GCP + r * sgcp + j, gct * f, mask=m)
            g_keep = gct * c0
        tl.store(drow + H + j, g_keep * (f * (1.0 - f)), mask=m)
        tl.store(drow + j, (gct * g) * (i * (1.0 - i)), mask=m)
        tl.store(drow + 3 * H + j, (gct * i) * ((1.0 - g * g) * 0.5), mask=m)
    else:
        tl.store(GCP + r * sgcp + j, gct * (update * f + copy), mask=m)
        tl.store(drow + H + j, ((gct * update) * c0) * (f * (1.0 - f)), mask=m)
        gca = gct * act
        tl.store(drow + j, (gca * g) * (i * (1.0 - i)), mask=m)
        tl.store(drow + 3 * H + j, (gca * i) * ((1.0 - g * g) * 0.5), mask=m)
        tl.store(CA + r * sca + j, copy * dh, mask=m)
        if GTO:
            h0 = tl.load(HP + r * shp + j, mask=m, other=0.0).to(DT)
            g_update = tl.sum(gct * f * c0, axis=0)
            g_copy = tl.sum(tl.where(m, dh * (h0 - o * t) + gct * (c0 - i * g), 0.0), axis=0)
            gz_in = g_update - g_copy
            if HAS_FL:
                fl = tl.load(FL + r * sfl).to(DT)
                gz_in = gz_in * (1.0 - fl)
                z_in = tl.load(ZI + r * szi).to(DT)
                tl.store(GFL + r * sgfl, -(g_update * z_in + g_copy * (1.0 - z_in)))
            tl.store(GZI + r * sgzi, gz_in)
    if DET and GRAD != 0:
        v = 0.0
        if HAS_GZ:
            x = tl.load(grow + 4 * H).to(DT)
            if GRAD == 1:
                inside = tl.abs(x * slope) < 1.0
            else:
                y = (x * slope + 1.0) * 0.5
                inside = (y >= 0.0) & (y <= 1.0)
            v = tl.where(inside, tl.load(GZ + r * sgz).to(DT) * (slope * 0.5), 0.0)
        tl.store(drow + 4 * H, v)
    if PB:  # layer norm: back through the projections' normalisation, from the row's d s
        tl.debug_barrier()
        jg = tl.arange(0, BLOCK_G)
        mg = jg < G
        d = tl.load(drow + jg, mask=mg, other=0.0).to(DT)
        _preact_backward_rows(
            d, GNS, ST, sst, r, jg, mg, G, X0, sx0, T0, st0, P0, sp0, Q0, sq0,
            X1, sx1, T1, st1, P1, sp1, Q1, sq1, X2, sx2, T2, st2, P2, sp2, Q2, sq2,
            N, HT0, HT1, HT2, DT,
        )  # fmt: skip


@triton.jit
def _norm_c_columns(
    j, GA, sga, TC, stc, FL, sfl, ZI, szi, GH, sgh, GH2, sgh2, STC, sstc, CN, scn, GG, GB, M, H,
    FIRST: tl.constexpr, HAS_FL: tl.constexpr, HAS_GH2: tl.constexpr, DT: tl.constexpr,
):  # fmt: skip
    """The gradients of c's gain and bias at columns ``j``: sums over the rows, in order."""
    m = j < H
    gg = tl.load(GG + j, mask=m, other=0.0).to(DT)
    gb = tl.load(GB + j, mask=m, other=0.0).to(DT)
    for r in range(0, M):
        o = tl.load(GA + r * sga + 2 * H + j, mask=m, other=0.0).to(DT)
        t = tl.load(TC + r * stc + j, mask=m, other=0.0).to(DT)
        dh = tl.load(GH + r * sgh + j, mask=m, other=0.0).to(DT)
        if HAS_GH2:
            dh = dh + tl.load(GH2 + r * sgh2 + j, mask=m, other=0.0).to(DT)
        if FIRST:
            gah = dh
        else:
            _, _, act = _masks(FL, sfl, ZI, szi, r, HAS_FL, DT)
            gah = dh * act
        dy = (gah * o) * (1.0 - t * t)
        mean = tl.load(STC + r * sstc).to(DT)
        rstd = tl.load(STC + r * sstc + 1).to(DT)
        c = tl.load(CN + r * scn + j, mask=m, other=0.0).to(DT)
        gg += dy * ((c - mean) * rstd)
        gb += dy
    tl.store(GG + j, gg, mask=m)
    tl.store(GB + j, gb, mask=m)


@triton.jit
def _ln_columns_kernel(
    GA, sga, TC, stc, FL, sfl, ZI, szi, GH, sgh, GH2, sgh2, STC, sstc, CN, scn, GG, GB, M, H,
    D, sd, GGN, GBS, G, X0, sx0, T0, st0, X1, sx1, T1, st1, X2, sx2, T2, st2, NC,
    FIRST: tl.constexpr, HAS_FL: tl.constexpr, HAS_GH2: tl.constexpr, DT: tl.constexpr,
    GAINS: tl.constexpr, N: tl.constexpr, HT0: tl.constexpr, HT1: tl.constexpr,
    HT2: tl.constexpr, HAS_GB: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """A layer-norm step's sums over rows, one program per block of columns: the first ``NC``
    programs c's gain and bias, the others (with ``GAINS``) the projections' gains and the
    bias of s."""
    pid = tl.program_id(0)
    if pid < NC:
        _norm_c_columns(
            pid * BLOCK + tl.arange(0, BLOCK), GA, sga, TC, stc, FL, sfl, ZI, szi, GH, sgh, GH2,
            sgh2, STC, sstc, CN, scn, GG, GB, M, H, FIRST, HAS_FL, HAS_GH2, DT,
        )  # fmt: skip
    if GAINS:  # noqa: SIM102 (a compile-time branch around a run-time one)
        if pid >= NC:
            _gain_columns(
                (pid - NC) * BLOCK + tl.arange(0, BLOCK), D, sd, GGN, GBS, M, G,
                X0, sx0, T0, st0, X1, sx1, T1, st1, X2, sx2, T2, st2,
                N, HT0, HT1, HT2, HAS_GB, DT,
            )  # fmt: skip


COLUMNS = 64
"""Columns per program of the kernels that sum over rows."""


def cell_backward(
    gates: Tensor,
    tc: Tensor,
    c_prev: Tensor,
    h_prev: Tensor,
    flush: Tensor | None,
    z_in: Tensor | None,
    g_h: Tensor,
    g_c: Tensor,
    ds: Tensor,
    grad_through_ops: bool,
    grad: int,
    slope: float,
    g_z: Tensor | None,
    norm_gain: Tensor | None,
    norm_stats: Tensor | None,
    norm_c: Tensor | None,
    norm_g_gain: Tensor | None,
    norm_g_bias: Tensor | None,
    g_h2: Tensor | None = None,
    recompute: tuple | None = None,
    norm_bias: Tensor | None = None,
    slope_tensor: Tensor | None = None,
    preact: tuple | None = None,
) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]:
    """The gate columns of ``ds`` (and with ``grad`` 1 or 2 its z column); returns d c_{t-1},
    the COPY rows' d h_{t-1} (``carry``), d z_in and d flush (:func:`hmrnn.core.fused.cell.
    cell_backward`); with layer norm adds to c's gain and bias gradients.

    Beyond the C++ cell's arguments: ``g_h2`` a second term of d h_t (the output's gradient,
    added here rather than in a launch of its own); ``recompute`` (with ``norm_bias``) the
    arguments ``xhat, gains, gates, add, acts`` of :func:`recompute`, done first in the same
    launch (``gates`` is then where ``acts`` go, or the kept gates); ``slope_tensor`` the slope
    read on the device (instead of ``slope``: CUDA graphs replay the current value);
    ``preact`` (with ``recompute``) the arguments ``stats, g_gains, g_P, g_bias, g_gates`` of
    :func:`preact_backward` (``g_gates`` the list it fills), done after it: the row work in the
    same launch, the sums over rows in the one launch that also sums c's gradients."""
    M, H = c_prev.shape
    first = z_in is None
    g_c_prev = torch.empty_like(c_prev)
    carry = None if first else torch.empty_like(c_prev)
    g_zin = c_prev.new_empty(M, 1) if grad_through_ops and not first else None
    g_flush = c_prev.new_empty(M, 1) if grad_through_ops and flush is not None else None
    fl, sfl = _col(flush, gates)
    zi, szi = _col(z_in, gates)
    ca, sca = _col(carry, gates)
    gzi, sgzi = _col(g_zin, gates)
    gfl, sgfl = _col(g_flush, gates)
    gz, sgz = _col(g_z, gates)
    gh2, sgh2 = _col(g_h2, gates)
    stc_t, sstc = _col(norm_stats, gates)
    cn, scn = _col(norm_c, gates)
    norm = norm_gain is not None
    if recompute is not None:
        assert norm and norm_c is not None and norm_bias is not None
        head, flat, meta = _recompute_args(*recompute, c=norm_c)
        G = gates.size(1)
        meta["BLOCK_G"] = _block(G)
    else:
        head, flat = [gates, 0, gates, gates, 0], [gates, 0] * 6
        meta = {"N": 1, "HT0": False, "HT1": False, "HT2": False, "ACTS": False, "BLOCK_G": 16}
    pb_args: list = [gates, 0, *([gates, 0] * 6)]
    if preact is not None:
        assert recompute is not None
        stats, _, g_P, _, g_gates = preact
        gates_k = recompute[2]
        head[2] = recompute[1]  # the gains (the recomputation reads them only for the gates)
        g_gates[:] = [ds.new_empty(M, 1) if t is not None else None for t in gates_k]
        ps, qs = _blocks(list(g_P), gates), _blocks(g_gates, gates)
        pb_args = [stats, stats.stride(0), *(v for k in range(3) for v in (*ps[k], *qs[k]))]
    dt = _DTYPES[c_prev.dtype]
    B = _block(H)
    wide = meta["ACTS"] or preact is not None
    _launch(
        _cell_backward_kernel, M, gates, gates.stride(0), tc, tc.stride(0), c_prev,
        c_prev.stride(0), h_prev, h_prev.stride(0), fl, sfl, zi, szi, g_h, g_h.stride(0), gh2,
        sgh2, g_c, g_c.stride(0), ds, ds.stride(0), g_c_prev, g_c_prev.stride(0), ca, sca, gzi,
        sgzi, gfl, sgfl, gz, sgz, norm_gain if norm else gates, stc_t, sstc, cn, scn,
        gates if norm_bias is None else norm_bias, float(slope),
        gates if slope_tensor is None else slope_tensor, H, gates.size(1), *head,
        *flat, *pb_args[:2], *pb_args[2:], FIRST=first, HAS_FL=flush is not None,
        GTO=grad_through_ops, GRAD=grad, DET=gates.size(1) > 4 * H, HAS_GZ=g_z is not None,
        NORM=norm, DT=dt, BLOCK=B, HAS_GH2=g_h2 is not None, RECOMP=recompute is not None,
        **meta, SLOPE_PTR=slope_tensor is not None, PB=preact is not None,
        num_warps=_warps(meta["BLOCK_G"] if wide else B),
    )  # fmt: skip
    if norm and M > 0:
        assert norm_g_gain is not None and norm_g_bias is not None
        NC = triton.cdiv(H, COLUMNS)
        gains_args: list = [ds, 0, gates, gates, 0, *([gates, 0] * 6)]
        gains_meta = {"N": 1, "HT0": False, "HT1": False, "HT2": False, "HAS_GB": False}
        programs = NC
        if preact is not None:
            assert recompute is not None
            _, g_gains, _, g_bias, _ = preact
            xs, ts = _blocks(list(recompute[0]), ds), _blocks(list(recompute[2]), ds)
            G = ds.size(1)
            gains_args = [
                ds, ds.stride(0), g_gains, ds if g_bias is None else g_bias, G,
                *(v for k in range(3) for v in (*xs[k], *ts[k])),
            ]  # fmt: skip
            has = [meta["HT0"], meta["HT1"], meta["HT2"]]
            gains_meta = {
                "N": meta["N"], "HT0": has[0], "HT1": has[1], "HT2": has[2],
                "HAS_GB": g_bias is not None,
            }  # fmt: skip
            programs = NC + triton.cdiv(G, COLUMNS)
        _launch(
            _ln_columns_kernel, programs, gates, gates.stride(0), tc, tc.stride(0), fl, sfl, zi,
            szi, g_h, g_h.stride(0), gh2, sgh2, stc_t, sstc, cn, scn, norm_g_gain, norm_g_bias,
            M, H, *gains_args, NC, FIRST=first, HAS_FL=flush is not None,
            HAS_GH2=g_h2 is not None, DT=dt, GAINS=preact is not None, **gains_meta,
            BLOCK=COLUMNS,
        )  # fmt: skip
    return g_c_prev, carry, g_zin, g_flush


@triton.jit
def _preact_backward_row(
    d, XH, sxh, GN, GT, sgt, GP, sgp, GG, sgg, ST, sst, r, k, j, m, G,
    HAS_GT: tl.constexpr, DT: tl.constexpr,
):  # fmt: skip
    x = tl.load(XH + r * sxh + j, mask=m, other=0.0).to(DT)
    w = tl.load(GN + k * G + j, mask=m, other=0.0).to(DT)
    rstd = tl.load(ST + r * sst + k).to(DT)
    if HAS_GT:
        dy = (d * tl.load(GT + r * sgt).to(DT)) * w
        tl.store(GG + r * sgg, tl.sum((d * w) * x, axis=0))
    else:
        dy = d * w
    m1 = tl.sum(dy, axis=0) / G
    m2 = tl.sum(dy * x, axis=0) / G
    tl.store(GP + r * sgp + j, ((dy - m1) - x * m2) * rstd, mask=m)


@triton.jit
def _preact_backward_kernel(
    D, sd, GN, ST, sst, G,
    X0, sx0, T0, st0, P0, sp0, Q0, sq0, X1, sx1, T1, st1, P1, sp1, Q1, sq1,
    X2, sx2, T2, st2, P2, sp2, Q2, sq2,
    N: tl.constexpr, HT0: tl.constexpr, HT1: tl.constexpr, HT2: tl.constexpr,
    DT: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    r = tl.program_id(0)
    j = tl.arange(0, BLOCK)
    m = j < G
    d = tl.load(D + r * sd + j, mask=m, other=0.0).to(DT)
    _preact_backward_rows(
        d, GN, ST, sst, r, j, m, G, X0, sx0, T0, st0, P0, sp0, Q0, sq0,
        X1, sx1, T1, st1, P1, sp1, Q1, sq1, X2, sx2, T2, st2, P2, sp2, Q2, sq2,
        N, HT0, HT1, HT2, DT,
    )  # fmt: skip


@triton.jit
def _preact_backward_rows(
    d, GN, ST, sst, r, j, m, G, X0, sx0, T0, st0, P0, sp0, Q0, sq0,
    X1, sx1, T1, st1, P1, sp1, Q1, sq1, X2, sx2, T2, st2, P2, sp2, Q2, sq2,
    N: tl.constexpr, HT0: tl.constexpr, HT1: tl.constexpr, HT2: tl.constexpr,
    DT: tl.constexpr,
):  # fmt: skip
    """Row r's d loss / d P_k and d loss / d gate_k for each of its N projections, from its d s
    (``d``)."""
    _preact_backward_row(d, X0, sx0, GN, T0, st0, P0, sp0, Q0, sq0, ST, sst, r, 0, j, m, G, HT0, DT)
    if N > 1:
        _preact_backward_row(
            d, X1, sx1, GN, T1, st1, P1, sp1, Q1, sq1, ST, sst, r, 1, j, m, G, HT1, DT
        )
    if N > 2:
        _preact_backward_row(
            d, X2, sx2, GN, T2, st2, P2, sp2, Q2, sq2, ST, sst, r, 2, j, m, G, HT2, DT
        )


@triton.jit
def _gain_columns(
    j, D, sd, GGN, GB, M, G, X0, sx0, T0, st0, X1, sx1, T1, st1, X2, sx2, T2, st2,
    N: tl.constexpr, HT0: tl.constexpr, HT1: tl.constexpr, HT2: tl.constexpr,
    HAS_GB: tl.constexpr, DT: tl.constexpr,
):  # fmt: skip
    """The gains' gradients at columns ``j`` (and with ``HAS_GB`` the bias's): per projection a
    sum over rows, in order."""
    m = j < G
    if HAS_GB:
        acc = tl.load(GB + j, mask=m, other=0.0).to(DT)
        for r in range(0, M):
            acc += tl.load(D + r * sd + j, mask=m, other=0.0).to(DT)
        tl.store(GB + j, acc, mask=m)
    _gain_sum(D, sd, GGN, 0, M, G, X0, sx0, T0, st0, j, m, HT0, DT)
    if N > 1:
        _gain_sum(D, sd, GGN, 1, M, G, X1, sx1, T1, st1, j, m, HT1, DT)
    if N > 2:
        _gain_sum(D, sd, GGN, 2, M, G, X2, sx2, T2, st2, j, m, HT2, DT)


@triton.jit
def _gains_grad_kernel(
    D, sd, GGN, GB, M, G, X0, sx0, T0, st0, X1, sx1, T1, st1, X2, sx2, T2, st2,
    N: tl.constexpr, HT0: tl.constexpr, HT1: tl.constexpr, HT2: tl.constexpr,
    HAS_GB: tl.constexpr, DT: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """:func:`_gain_columns`, one program per block of columns."""
    _gain_columns(
        tl.program_id(0) * BLOCK + tl.arange(0, BLOCK), D, sd, GGN, GB, M, G,
        X0, sx0, T0, st0, X1, sx1, T1, st1, X2, sx2, T2, st2, N, HT0, HT1, HT2, HAS_GB, DT,
    )  # fmt: skip


@triton.jit
def _gain_sum(D, sd, GGN, k, M, G, XH, sxh, GT, sgt, j, m, HAS_GT: tl.constexpr, DT: tl.constexpr):
    acc = tl.load(GGN + k * G + j, mask=m, other=0.0).to(DT)
    for r in range(0, M):
        d = tl.load(D + r * sd + j, mask=m, other=0.0).to(DT)
        if HAS_GT:
            d = d * tl.load(GT + r * sgt).to(DT)
        acc += d * tl.load(XH + r * sxh + j, mask=m, other=0.0).to(DT)
    tl.store(GGN + k * G + j, acc, mask=m)


def preact_backward(
    ds: Tensor,
    xhat: list[Tensor],
    stats: Tensor,
    gains: Tensor,
    gates: list[Tensor | None],
    g_gains: Tensor,
    g_P: list[Tensor],
    g_bias: Tensor | None = None,
) -> list[Tensor | None]:
    """d loss / d P_k into ``g_P[k]``, the gains' gradients added to ``g_gains`` (n, G) (and
    with ``g_bias`` (G,) the sum of ``ds`` over rows added to it); returns d loss / d gate_k
    (M, 1) per block (None for an ungated one)."""
    M, G = ds.shape
    n = len(xhat)
    assert gains.is_contiguous() and g_gains.is_contiguous()
    g_gates: list[Tensor | None] = [ds.new_empty(M, 1) if t is not None else None for t in gates]
    xs, ts = _blocks(list(xhat), ds), _blocks(list(gates), ds)
    ps, qs = _blocks(list(g_P), ds), _blocks(g_gates, ds)
    flat = [v for k in range(3) for v in (*xs[k], *ts[k], *ps[k], *qs[k])]
    has = [k < n and gates[k] is not None for k in range(3)]
    dt = _DTYPES[ds.dtype]
    B = _block(G)
    _launch(
        _preact_backward_kernel, M, ds, ds.stride(0), gains, stats, stats.stride(0), G, *flat,
        N=n, HT0=has[0], HT1=has[1], HT2=has[2], DT=dt, BLOCK=B, num_warps=_warps(B),
    )  # fmt: skip
    if M > 0:
        sums = [v for k in range(3) for v in (*xs[k], *ts[k])]
        _launch(
            _gains_grad_kernel, triton.cdiv(G, COLUMNS), ds, ds.stride(0), g_gains,
            ds if g_bias is None else g_bias, M, G, *sums, N=n, HT0=has[0], HT1=has[1],
            HT2=has[2], HAS_GB=g_bias is not None, DT=dt, BLOCK=COLUMNS,
        )  # fmt: skip
    return g_gates


@triton.jit
def _scatter_kernel(
    X0, sx0, XA, sxa, XB, sxb, CA, sca, GS, sgs, GA, sga, HA, sha, GB, sgb, HB, shb,
    ZP, szp, ZI, szi, GZB, sgzb, GZI, sgzi, GFL, sgfl, GTD, sgtd, GIH, sgih, GZP, sgzp, H,
    HAS_CA: tl.constexpr, ABOVE: tl.constexpr, BELOW: tl.constexpr, HAS_ZI: tl.constexpr,
    HAS_GZB: tl.constexpr, HAS_GZI: tl.constexpr, HAS_GFL: tl.constexpr,
    HAS_GTD: tl.constexpr, HAS_GIH: tl.constexpr, HAS_GZP: tl.constexpr,
    GATED: tl.constexpr, DT: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    r = tl.program_id(0)
    j = tl.arange(0, BLOCK)
    m = j < H
    out = tl.load(X0 + r * sx0 + j, mask=m, other=0.0).to(DT)
    if HAS_CA:
        out = out + tl.load(CA + r * sca + j, mask=m, other=0.0).to(DT)
    tl.store(GS + r * sgs + j, out, mask=m)
    zgrad = 0.0
    if HAS_GFL:
        zgrad = tl.load(GFL + r * sgfl).to(DT)
    if ABOVE:
        ga = tl.load(XA + r * sxa + j, mask=m, other=0.0).to(DT)
        acc = tl.load(GA + r * sga + j, mask=m, other=0.0).to(DT)
        if GATED:
            z = tl.load(ZP + r * szp).to(DT)
            h = tl.load(HA + r * sha + j, mask=m, other=0.0).to(DT)
            tl.store(GA + r * sga + j, acc + ga * z, mask=m)
            zgrad = zgrad + tl.sum(ga * h, axis=0)
        else:
            tl.store(GA + r * sga + j, acc + ga, mask=m)
            if HAS_GTD:
                zgrad = zgrad + tl.load(GTD + r * sgtd).to(DT)
    if HAS_GZP:
        tl.store(GZP + r * sgzp, zgrad)
    if BELOW:
        gb = tl.load(XB + r * sxb + j, mask=m, other=0.0).to(DT)
        acc = tl.load(GB + r * sgb + j, mask=m, other=0.0).to(DT)
        part = 0.0
        if GATED and HAS_ZI:
            z = tl.load(ZI + r * szi).to(DT)
            h = tl.load(HB + r * shb + j, mask=m, other=0.0).to(DT)
            tl.store(GB + r * sgb + j, acc + gb * z, mask=m)
            part = tl.sum(gb * h, axis=0)
        else:
            tl.store(GB + r * sgb + j, acc + gb, mask=m)
            if HAS_GIH:
                part = tl.load(GIH + r * sgih).to(DT)
        if HAS_GZB:
            prev = tl.load(GZB + r * sgzb).to(DT)
            if HAS_GZI:
                tl.store(GZB + r * sgzb, prev + (part + tl.load(GZI + r * sgzi).to(DT)))
            else:
                tl.store(GZB + r * sgzb, prev + part)


def scatter(
    gx: list[Tensor],
    carry: Tensor | None,
    g_h_self: Tensor,
    g_h_above: Tensor | None,
    h_above: Tensor | None,
    g_h_below: Tensor | None,
    h_below: Tensor | None,
    z_prev: Tensor | None,
    z_in: Tensor | None,
    g_z_below: Tensor | None,
    g_zin: Tensor | None,
    g_flush: Tensor | None,
    g_gate_td: Tensor | None,
    g_gate_ih: Tensor | None,
    gated: bool,
) -> Tensor | None:
    """After the backward multiply: writes ``g_h_self``, adds to ``g_h_above``, ``g_h_below``
    and ``g_z_below``; returns d loss / d z_{t-1} of this layer, zero where nothing reaches it
    (``native.cpp``'s scatter returns None then; a tensor here saves a launch)."""
    M, H = g_h_self.shape
    above, below = g_h_above is not None, g_h_below is not None
    if len(gx) == 1:  # one (M, n H) tensor: its column ranges
        x0 = gx[0]
        xa = x0[:, H : 2 * H] if above else None
        xb = x0[:, (2 if above else 1) * H :][:, :H] if below else None
    else:
        x0 = gx[0]
        xa = gx[1] if above else None
        xb = gx[2 if above else 1] if below else None
    g_zprev = g_h_self.new_empty(M, 1)  # always (zero where nothing reaches it): no launch
    like = g_h_self
    args = [
        _col(x0, like), _col(xa, like), _col(xb, like), _col(carry, like), _col(g_h_self, like),
        _col(g_h_above, like), _col(h_above, like), _col(g_h_below, like), _col(h_below, like),
        _col(z_prev, like), _col(z_in, like), _col(g_z_below, like), _col(g_zin, like),
        _col(g_flush, like), _col(g_gate_td, like), _col(g_gate_ih, like), _col(g_zprev, like),
    ]  # fmt: skip
    B = _block(H)
    _launch(
        _scatter_kernel, M, *[v for pair in args for v in pair], H, HAS_CA=carry is not None,
        ABOVE=above, BELOW=below, HAS_ZI=z_in is not None, HAS_GZB=g_z_below is not None,
        HAS_GZI=g_zin is not None, HAS_GFL=g_flush is not None, HAS_GTD=g_gate_td is not None,
        HAS_GIH=g_gate_ih is not None, HAS_GZP=True, GATED=gated,
        DT=_DTYPES[g_h_self.dtype], BLOCK=B, num_warps=_warps(B),
    )  # fmt: skip
    return g_zprev


_INTERPRETED = interpreted()
"""Whether this process runs the kernels in the interpreter (fixed at import)."""
