"""Layer norm in the hand-written loop, forward and backward by hand (model.md §4).

With layer norm a step of layer l computes its projections separately,

    P_k = x_k W_k^T      x_k: h_{t-1}^l (hh), h_{t-1}^{l+1} (td), h_t^{l-1} (ih)
    s   = sum_k gate_k * gain_k * xhat_k + b,    xhat_k = (P_k - mean) * rstd, over all G columns

(gate_hh = 1, gate_td = z_{t-1}^l, gate_ih = z_t^{l-1}; layer 0's bottom-up term is normalised
for the whole sequence beforehand and added like the bias), and reads c_t through
tanh(gain_c * chat + bias_c). The all-zero-row rule of docs/decisions.md: a projection (or cell)
row that is all zero is absent; its normalised value is zero (the bias alone for c) with zero
gradient. Here that is ``rstd = 0`` for such a row, which the backward formulas then carry
exactly: d P = rstd * (...) = 0, and it adds nothing to the gains' gradients.

The functions here are the torch-operation versions; :mod:`hmrnn.core.fused.native` has the same
in C++. Shapes: M rows (the batch, or the rows that work), G gate columns, H hidden units.
"""

from __future__ import annotations

import torch
from torch import Tensor

from hmrnn.core.autograd_step import LN_EPS


def normalise(x: Tensor, xhat: Tensor) -> Tensor:
    """Writes (x - mean) * rstd into ``xhat`` (M, N) and returns rstd (M, 1), zero for an
    all-zero row."""
    var, mean = torch.var_mean(x, dim=1, keepdim=True, correction=0)
    rstd = torch.rsqrt(var + LN_EPS) * (x != 0).any(dim=1, keepdim=True)
    torch.mul(x - mean, rstd, out=xhat)
    return rstd


def normalise_backward(dy: Tensor, xhat: Tensor, rstd: Tensor) -> Tensor:
    """d loss / d x of :func:`normalise` from d loss / d xhat ``dy`` (M, N)."""
    proj = (dy * xhat).mean(1, keepdim=True)
    return (dy - dy.mean(1, keepdim=True) - xhat * proj) * rstd


def preact_forward(
    P: list[Tensor],
    gains: list[Tensor],
    gates: list[Tensor | None],
    add: Tensor,
    s: Tensor,
    xhat: list[Tensor],
    rstd: Tensor,
) -> None:
    """s = add + sum_k gate_k * gain_k * xhat_k into ``s`` (M, G); per block k writes xhat_k
    (M, G) and column k of ``rstd`` (M, n). ``gates[k]`` (M, 1) or None for 1; ``add`` (G,) or
    (M, G)."""
    for k, p in enumerate(P):
        rstd[:, k : k + 1] = normalise(p, xhat[k])
    preact_sum(xhat, gains, gates, add, s)


def preact_sum(
    xhat: list[Tensor], gains: list[Tensor], gates: list[Tensor | None], add: Tensor, s: Tensor
) -> None:
    """s = add + sum_k gate_k * gain_k * xhat_k into ``s`` (the forward's and the backward's
    recomputation alike)."""
    s.copy_(add.expand_as(s))
    for x, gain, gate in zip(xhat, gains, gates, strict=True):
        term = x * gain
        if gate is None:
            s.add_(term)
        else:
            s.addcmul_(term, gate)


def preact_backward(
    ds: Tensor,
    xhat: list[Tensor],
    rstd: Tensor,
    gains: list[Tensor],
    gates: list[Tensor | None],
    g_gains: list[Tensor],
    g_P: list[Tensor],
) -> list[Tensor | None]:
    """Backward of :func:`preact_forward` from d loss / d s (``ds``, (M, G)): writes
    d loss / d P_k into ``g_P[k]``, adds to the gains' gradients ``g_gains[k]`` (G,), and
    returns per block d loss / d gate_k (M, 1) (None for an ungated block)."""
    g_gates: list[Tensor | None] = []
    for k, (gain, gate) in enumerate(zip(gains, gates, strict=True)):
        xk = xhat[k]
        dy = ds if gate is None else ds * gate
        g_gains[k].add_((dy * xk).sum(0))
        g_gates.append(None if gate is None else (ds * gain * xk).sum(1, keepdim=True))
        g_P[k].copy_(normalise_backward(dy * gain, xk, rstd[:, k : k + 1]))
    return g_gates


def norm_c_forward(c: Tensor, gain: Tensor, bias: Tensor, tc: Tensor, stats: Tensor) -> None:
    """tc = tanh(gain * chat + bias) for c_t (M, H); ``stats`` (M, 2) gets mean and rstd (rstd
    0 for an all-zero row, whose chat is then 0)."""
    var, mean = torch.var_mean(c, dim=1, keepdim=True, correction=0)
    rstd = torch.rsqrt(var + LN_EPS) * (c != 0).any(dim=1, keepdim=True)
    stats[:, :1] = mean
    stats[:, 1:] = rstd
    torch.tanh(torch.addcmul(bias, (c - mean) * rstd, gain), out=tc)


def norm_c_backward(
    g_tc: Tensor,
    tc: Tensor,
    c: Tensor,
    stats: Tensor,
    gain: Tensor,
    g_gain: Tensor,
    g_bias: Tensor,
) -> Tensor:
    """d loss / d c_t through :func:`norm_c_forward` from d loss / d tc; adds to the gradients
    of the gain and bias (H,)."""
    dy = g_tc * (1.0 - tc * tc)
    chat = (c - stats[:, :1]) * stats[:, 1:]
    g_gain.add_((dy * chat).sum(0))
    g_bias.add_(dy.sum(0))
    return normalise_backward(dy * gain, chat, stats[:, 1:])
