"""The HM-LSTM's fast path without layer norm: one loop over the sequence, written by hand.

:class:`HMLSTM` runs this for ``layer_norm=False`` (the equations of model.md §1 without the
normalisation). Compared with building the sequence out of autograd operations it

- computes the backward pass through time by hand (an autograd Function over the whole
  sequence): no autograd graph of ~40 nodes per layer and step, only the tensors the backward
  needs are kept, in preallocated (T, B, ...) buffers;
- multiplies with oneDNN and weights packed once per call (float32 on CPU), 1.2-1.5x faster than
  the default GEMM for the per-step shapes (docs/performance.md), both forward (x W^T) and for the
  input gradients (ds W);
- computes the weight gradients of all steps in one multiply per layer;
- orders the gate rows i, f, o, g, z internally, so one sigmoid covers all four gates;
- skips the work of COPY rows (``HMLSTM.skip_copy``): their h and c are copied and only their
  boundary is computed; without autograd always, and there the gated top-down and bottom-up
  blocks also multiply only the rows whose gate is open; in training with imposed boundaries
  (nothing needs a COPY row's gates then), forward and backward. Rows are gathered only when few
  enough of them work (:data:`SPARSE_BELOW`). See :meth:`Loop.sparse_allowed`.

The oracle is :func:`hmrnn.core.reference.reference_forward` (tests/core/test_reference.py and
tests/core/test_fused.py); the boundary variants and the COPY / UPDATE / FLUSH masks are the same
as in :mod:`hmrnn.core.hmlstm`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from hmrnn.core.boundary import hard_sigmoid

USE_ONEDNN = True
"""Multiply with oneDNN's packed weights on CPU for float32 (set False to use torch's GEMM)."""

PACK_FROM = 8
"""With autograd, weights are packed for oneDNN only for sequences of at least this many steps
(packing costs about as much as a few steps' multiplies)."""

SPARSE_MIN_WEIGHT = 400_000
"""Rows are skipped only in layers whose step weight has at least this many entries (H = 256 and
up): below it a step's multiply is so cheap that gathering and scattering rows costs more (at
H = 128, batch 32, evaluation took 107 ms with skipping against 80 ms without)."""

SPARSE_BELOW = 0.5
"""A layer gathers its working (non-COPY) rows, or the rows of an open gate, when they are at
most this fraction of the batch; above it, the dense step is cheaper than gather and scatter."""


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


class Spec:
    """What the loop needs to know about the module (plain values, no parameters)."""

    def __init__(self, rnn, training: bool, device: torch.device | None = None) -> None:
        K = rnn.num_layers
        self.K, self.H = K, rnn.hidden_size
        self.detector = [rnn.has_detector(l) for l in range(K)]
        self.top_down = [rnn.has_top_down(l) for l in range(K)]
        self.variant = rnn.boundary
        self.training = training
        self.grad_through_ops = rnn.grad_through_ops
        self.slope = float(rnn.slope)
        # row counts would synchronise a GPU at every step
        self.skip_copy = rnn.skip_copy and (device is None or device.type == "cpu")


def gate_order(H: int, G: int, device: torch.device) -> Tensor:
    """Row permutation from the parameters' i, f, g, o, z to the loop's i, f, o, g, z.

    The loop's g columns are also doubled (:func:`_loop_weights`): one sigmoid over the four gate
    blocks then gives g = tanh(s_g) = 2 sigmoid(2 s_g) - 1 (a lone tanh is 3x slower here).
    """
    r = torch.arange(G, device=device)
    return torch.cat([r[: 2 * H], r[3 * H : 4 * H], r[2 * H : 3 * H], r[4 * H :]])


def _boundary(spec: Spec, s_z: Tensor) -> Tensor:
    """z from the pre-activation of the z row, as :func:`hmrnn.core.boundary.boundary`."""
    if spec.variant == "soft":
        return hard_sigmoid(s_z, spec.slope)
    if spec.variant == "bernoulli" and spec.training:
        return torch.bernoulli(hard_sigmoid(s_z, spec.slope))
    return (s_z > 0).to(s_z.dtype)


def _boundary_grad(spec: Spec, s_z: Tensor, grad_z: Tensor) -> Tensor:
    """d loss / d s_z: the hard sigmoid's derivative (straight-through for step and bernoulli)."""
    if spec.variant == "soft":  # autograd's clamp passes the gradient at the ends too
        y = (s_z * spec.slope + 1.0) * 0.5
        inside = (y >= 0.0) & (y <= 1.0)
    else:
        inside = (s_z * spec.slope).abs() < 1.0
    return grad_z * inside * (spec.slope * 0.5)


def _masks(flush: Tensor | None, z_in: Tensor) -> tuple[Tensor, Tensor]:
    """(update, copy), each (B, 1), for a layer above the first."""
    if flush is None:
        return z_in, 1.0 - z_in
    keep = 1.0 - flush
    return keep * z_in, keep * (1.0 - z_in)


def _cell_forward(spec: Spec, l: int, s: Tensor, c_prev, h_prev, flush, z_in, out):
    """One cell from its pre-activation s (M, G): writes the activations (i, f, o, g and the raw
    s_z) and c_t, tanh(c_t), h_t into ``out = (A, C, TC, H)`` and returns z_t (or None)."""
    H = spec.H
    A, c_new, tc, h_new = out
    i, f, o, g = (A[:, j * H : (j + 1) * H] for j in range(4))
    torch.sigmoid(s[:, : 4 * H], out=A[:, : 4 * H])
    g.mul_(2.0).sub_(1.0)  # tanh of the unscaled s_g (gate_order)
    z_new = None
    if spec.detector[l]:
        A[:, 4 * H :].copy_(s[:, 4 * H :])
        z_new = _boundary(spec, s[:, 4 * H :])
    ig = i * g
    if z_in is None:  # layer 0 never copies; FLUSH drops f * c_{t-1}
        fc = f * c_prev
        if flush is not None:
            fc.mul_(1.0 - flush)
        torch.add(fc, ig, out=c_new)
        torch.tanh(c_new, out=tc)
        torch.mul(o, tc, out=h_new)
    else:
        update, copy = _masks(flush, z_in)
        act = 1.0 - copy
        torch.addcmul(torch.addcmul(copy * c_prev, update, f * c_prev), act, ig, out=c_new)
        torch.tanh(c_new, out=tc)
        torch.addcmul(copy * h_prev, act, o * tc, out=h_new)
    return z_new


def _cell_backward(spec: Spec, l: int, A, tc, c_prev, h_prev, flush, z_in, g_h, g_c, g_z, ds):
    """Backward of one cell: fills ds (M, G), d loss / d s, and returns
    (d c_{t-1}, the part of d h_{t-1} that bypasses the multiply, d z_in, d flush); the last two
    are None unless the gradient flows through the operation masks."""
    H = spec.H
    i, f, o, g = (A[:, j * H : (j + 1) * H] for j in range(4))
    d_i, d_f, d_o, d_g = (ds[:, j * H : (j + 1) * H] for j in range(4))
    gto = spec.grad_through_ops
    g_zin = g_flush = carry = None
    if z_in is None:  # h = o tanh(c), c = (1 - flush) f c_prev + i g
        torch.mul(g_h * tc, o * (1.0 - o), out=d_o)
        g_ct = torch.addcmul(g_c, g_h * o, 1.0 - tc * tc)
        keep = f if flush is None else f * (1.0 - flush)
        g_c_prev = g_ct * keep
        if flush is not None and gto:
            g_flush = -(g_ct * f * c_prev).sum(1, keepdim=True)
        g_keep = g_ct * c_prev
        if flush is not None:
            g_keep = g_keep * (1.0 - flush)
        torch.mul(g_keep, f * (1.0 - f), out=d_f)
        torch.mul(g_ct * g, i * (1.0 - i), out=d_i)
        torch.mul(g_ct * i, (1.0 - g * g) * 0.5, out=d_g)  # d g / d (2 s_g)
    else:  # h = copy h_prev + act o tanh(c), c = (update f + copy) c_prev + act i g
        update, copy = _masks(flush, z_in)
        act = 1.0 - copy
        g_act_h = g_h * act
        torch.mul(g_act_h * tc, o * (1.0 - o), out=d_o)
        g_ct = torch.addcmul(g_c, g_act_h * o, 1.0 - tc * tc)
        g_c_prev = g_ct * (update * f + copy)
        torch.mul(g_ct * update * c_prev, f * (1.0 - f), out=d_f)
        g_ct_act = g_ct * act
        torch.mul(g_ct_act * g, i * (1.0 - i), out=d_i)
        torch.mul(g_ct_act * i, (1.0 - g * g) * 0.5, out=d_g)
        carry = copy * g_h
        if gto:  # per row: d/d update, and d/d copy with act = 1 - copy folded in
            g_update = (g_ct * f * c_prev).sum(1, keepdim=True)
            g_copy = (g_h * (h_prev - o * tc) + g_ct * (c_prev - i * g)).sum(1, keepdim=True)
            g_zin = g_update - g_copy
            if flush is not None:
                g_zin = g_zin * (1.0 - flush)
                g_flush = -(g_update * z_in + g_copy * (1.0 - z_in))
    if spec.detector[l]:
        if g_z is None:  # imposed boundaries: z does not depend on s
            ds[:, 4 * H :].zero_()
        else:
            ds[:, 4 * H :] = _boundary_grad(spec, A[:, 4 * H :], g_z)
    return g_c_prev, carry, g_zin, g_flush


class Loop:
    """The forward loop over T steps and K layers, optionally keeping what the backward needs.

    Weights and biases are in the loop's gate order (:func:`gate_order`); ``bottom_up`` is layer
    0's W x_t + b for every step, (T, B, G_0), in the same order.
    """

    def __init__(
        self,
        spec: Spec,
        bottom_up: Tensor,
        h0: Tensor,
        c0: Tensor,
        z0: Tensor,
        imposed: Tensor | None,
        matmuls: list[StepMatmul],
        biases: list[Tensor],
        keep: bool,
    ) -> None:
        self.spec = spec
        self.bottom_up, self.h0, self.c0, self.z0 = bottom_up, h0, c0, z0
        self.imposed = imposed
        self.keep = keep
        T, B, _ = bottom_up.shape
        K, H = spec.K, spec.H
        self.T, self.B = T, B
        self.mm = matmuls
        self.biases = [None, *biases]
        steps = T if keep else 1
        new = lambda *shape: bottom_up.new_empty(steps, *shape)  # noqa: E731
        self.X = [new(B, m.wt.size(0)) for m in matmuls]  # gated, concatenated inputs
        self.A = [new(B, m.wt.size(1)) for m in matmuls]  # i, f, o, g and the raw s_z
        self.C = [new(B, H) for _ in range(K)]  # c_t
        self.TC = [new(B, H) for _ in range(K)]  # tanh(c_t)
        self.Hs = [bottom_up.new_empty(T, B, H) for _ in range(K)]  # h_t, the output
        self.Z = bottom_up.new_zeros(T, K, B, 1)  # z_t as used
        # per-step views, made once (indexing inside the loop costs microseconds per call)
        self.Xt, self.At, self.Ct, self.TCt, self.Ht = (
            [b.unbind(0) for b in buffers] for buffers in (self.X, self.A, self.C, self.TC, self.Hs)
        )
        self.Zt = [zt.unbind(0) for zt in self.Z.unbind(0)]  # Zt[t][l]: (B, 1)
        self.bottom_up_t = bottom_up.unbind(0)
        self.sparse_layer = [m.wt.numel() >= SPARSE_MIN_WEIGHT for m in matmuls]
        self.worked: dict[tuple[int, int], Tensor] = {}  # (t, l) -> rows computed, if not all
        self.used: list[Tensor | None] = [None] * K  # (T, B) rows that enter the weight gradient

    def run(self) -> None:
        spec = self.spec
        K = spec.K
        h = list(self.h0.unbind(0))
        c = list(self.c0.unbind(0))
        z = [zl.unsqueeze(1) for zl in self.z0.unbind(0)]
        for t in range(self.T):
            for l in range(K):
                h[l], c[l], z_new = self.cell(t, l, h, c, z)
                if not spec.detector[l]:
                    z_new = None
                elif self.imposed is not None:
                    z_new = self.imposed[t, :, l : l + 1]
                if z_new is not None:
                    self.Zt[t][l].copy_(z_new)
                z[l] = self.Zt[t][l]
        self.h_last, self.c_last, self.z_last = h, c, z

    def sparse_allowed(self, t: int) -> bool:
        """Whether step t may leave out the work of COPY rows (and of closed gates).

        Without autograd always (but for Bernoulli draws in training, which must match the dense
        path exactly). With autograd only for imposed boundaries after the first step: then
        nothing needs a COPY row's gates (z is given, so no gradient reaches the masks; at t = 0
        the initial state's z may still want one).
        """
        spec = self.spec
        if not spec.skip_copy or (spec.training and spec.variant == "bernoulli"):
            return False
        return not self.keep or (self.imposed is not None and t > 0)

    def cell(self, t: int, l: int, h: list, c: list, z: list):
        """Layer l at step t: writes h_t (self.Hs) and returns (h_t, c_t, z_t or None)."""
        spec = self.spec
        H = spec.H
        k = t if self.keep else 0
        z_prev, h_prev, c_prev = z[l], h[l], c[l]
        flush = z_prev if spec.detector[l] else None
        z_in = None if l == 0 else z[l - 1]
        above = h[l + 1] if spec.top_down[l] else None
        below = None if l == 0 else h[l - 1]

        sparse = self.sparse_layer[l] and self.sparse_allowed(t)
        if sparse and z_in is not None:
            copy = _masks(flush, z_in)[1].squeeze(1) == 1.0
            working = int(copy.numel() - copy.sum())
            if working <= SPARSE_BELOW * copy.numel():
                return self.skipping_cell(t, l, h_prev, c_prev, z_prev, above, below, z_in, copy)

        if sparse and not self.keep:
            s = self.sparse_inputs(t, l, h_prev, z_prev, above, below, z_in)
            if s is not None:
                out = (self.At[l][k], self.Ct[l][k], self.TCt[l][k], self.Ht[l][t])
                z_new = _cell_forward(spec, l, s, c_prev, h_prev, flush, z_in, out)
                return out[3], out[1], z_new

        X = self.Xt[l][k]
        X[:, :H].copy_(h_prev)
        col = H
        if above is not None:
            torch.mul(above, z_prev, out=X[:, H : 2 * H])
            col = 2 * H
        if below is not None:
            torch.mul(below, z_in, out=X[:, col : col + H])
        if l == 0:
            s = self.mm[0].forward(X, add=self.bottom_up_t[t])
        else:
            s = self.mm[l].forward(X, self.biases[l])
        out = (self.At[l][k], self.Ct[l][k], self.TCt[l][k], self.Ht[l][t])
        z_new = _cell_forward(spec, l, s, c_prev, h_prev, flush, z_in, out)
        return out[3], out[1], z_new

    def sparse_inputs(self, t, l, h_prev, z_prev, above, below, z_in) -> Tensor | None:
        """Without autograd: s with the gated top-down and bottom-up blocks multiplied only for
        the rows whose gate is open, or None when every gate is open on most rows (then one
        multiply over the concatenated inputs is faster)."""
        H, B = self.spec.H, h_prev.size(0)
        gated = []  # (block, input, gate, open rows)
        if above is not None:
            gated.append((1, above, z_prev, (z_prev != 0).squeeze(1)))
        if below is not None:
            gated.append((len(gated) + 1, below, z_in, (z_in != 0).squeeze(1)))
        counts = [int(o.sum()) for *_, o in gated]
        if all(n > SPARSE_BELOW * B for n in counts):
            return None
        mm = self.mm[l]
        add = self.bottom_up_t[t] if l == 0 else None
        s = mm.block(0, H).forward(h_prev, self.biases[l], add=add)
        for (k, x, gate, is_open), n in zip(gated, counts, strict=True):
            if n > SPARSE_BELOW * B:
                s = s + mm.block(k, H).forward(x * gate)
            elif n:
                rows = is_open.nonzero().squeeze(1)
                part = x.index_select(0, rows) * gate.index_select(0, rows)
                s.index_add_(0, rows, mm.block(k, H).forward(part))
        return s

    def skipping_cell(self, t, l, h_prev, c_prev, z_prev, above, below, z_in, copy):
        """:meth:`cell` for the rows that do not COPY only (layers above the first).

        A COPY row keeps h and c; without imposed boundaries its z is new, from
        s_z = U_z h_{t-1} + b_z (both gated inputs are off), a matrix-vector product.
        Equal to the dense cell up to rounding.
        """
        spec = self.spec
        H = spec.H
        k = t if self.keep else 0
        rows = (~copy).nonzero().squeeze(1)
        h_new, c_new = self.Ht[l][t], self.Ct[l][k]
        h_new.copy_(h_prev)
        c_new.copy_(c_prev)
        z_new = None
        if spec.detector[l] and self.imposed is None:
            z_new = h_prev.new_empty(h_prev.size(0), 1)
        if self.keep:
            self.worked[(t, l)] = rows
            if self.used[l] is None:
                self.used[l] = torch.ones(self.T, self.B, dtype=torch.bool, device=copy.device)
            self.used[l][t] = ~copy
        if rows.numel():
            pick = lambda x: x.index_select(0, rows)  # noqa: E731
            h_w, c_w, z_w, zin_w = pick(h_prev), pick(c_prev), pick(z_prev), pick(z_in)
            parts = [h_w]
            if above is not None:
                parts.append(pick(above) * z_w)
            parts.append(pick(below) * zin_w)
            X = torch.cat(parts, dim=1)
            s = self.mm[l].forward(X, self.biases[l])
            out = (torch.empty_like(s), *(torch.empty_like(c_w) for _ in range(3)))
            flush = z_w if spec.detector[l] else None
            z_rows = _cell_forward(spec, l, s, c_w, h_w, flush, zin_w, out)
            A, c_rows, tc_rows, h_rows = out
            h_new.index_copy_(0, rows, h_rows)
            c_new.index_copy_(0, rows, c_rows)
            if z_new is not None:
                z_new.index_copy_(0, rows, z_rows)
            if self.keep:
                self.Xt[l][t].index_copy_(0, rows, X)
                self.At[l][t].index_copy_(0, rows, A)
                self.TCt[l][t].index_copy_(0, rows, tc_rows)
        still = copy.nonzero().squeeze(1)
        if z_new is not None and still.numel():
            wt, bias = self.mm[l].wt, self.biases[l]
            s_z = torch.addmm(bias[4 * H :], h_prev.index_select(0, still), wt[:H, 4 * H :])
            z_new.index_copy_(0, still, _boundary(spec, s_z))
        return h_new, c_new, z_new

    def outputs(self) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """output (T, B, K, H), h (K, B, H), c (K, B, H), z (K, B), boundaries (T, B, K)."""
        output = torch.stack(self.Hs, dim=2)
        h = torch.stack(self.h_last)
        c = torch.stack(self.c_last)
        z = torch.cat(self.z_last, dim=1).t().contiguous()
        bounds = self.Z.squeeze(-1).transpose(1, 2).contiguous()
        return output, h, c, z, bounds

    def backward(self, g_out, g_h, g_c, g_z, g_bounds):
        """Backward through time: gradients of (bottom_up, h0, c0, z0, weights, biases)."""
        spec = self.spec
        K, H, T = spec.K, spec.H, self.T
        zeros = lambda x: torch.zeros_like(x)  # noqa: E731
        gh = [zeros(x) for x in self.h0.unbind(0)] if g_h is None else list(g_h.clone().unbind(0))
        gc = [zeros(x) for x in self.c0.unbind(0)] if g_c is None else list(g_c.clone().unbind(0))
        if g_z is None:
            gz = [self.z0.new_zeros(self.B, 1) for _ in range(K)]
        else:
            gz = [x.unsqueeze(1) for x in g_z.clone().unbind(0)]
        dS = [torch.empty_like(a) for a in self.A]
        z_at = lambda t, l: self.z0[l].unsqueeze(1) if t < 0 else self.Zt[t][l]  # noqa: E731
        h_at = lambda t, l: self.h0[l] if t < 0 else self.Ht[l][t]  # noqa: E731

        for t in range(T - 1, -1, -1):
            for l in range(K - 1, -1, -1):
                c_prev = self.c0[l] if t == 0 else self.Ct[l][t - 1]
                z_prev = z_at(t - 1, l)
                z_in = None if l == 0 else self.Zt[t][l - 1]
                g_hl = gh[l] if g_out is None else gh[l] + g_out[t, :, l]
                g_zl = gz[l] if g_bounds is None else gz[l] + g_bounds[t, :, l : l + 1]
                if self.imposed is not None:
                    g_zl = None
                rows = self.worked.get((t, l))
                if rows is not None:  # only these rows worked; COPY rows pass gradients on
                    gh[l], gc[l] = self.skipped_backward(t, l, rows, gh, gc, g_hl, c_prev, dS)
                    gz[l] = torch.zeros_like(gz[l])  # imposed: no gradient reaches z_{t-1}
                    continue
                X, ds = self.Xt[l][t], dS[l][t]
                args = (self.At[l][t], self.TCt[l][t], c_prev, X[:, :H])
                flush = z_prev if spec.detector[l] else None
                gc[l], carry, g_zin, g_flush = _cell_backward(
                    spec, l, *args, flush, z_in, g_hl, gc[l], g_zl, ds
                )
                gx = self.mm[l].backward(ds)
                gh[l] = gx[:, :H] if carry is None else gx[:, :H] + carry
                g_zprev = g_flush
                col = H
                if spec.top_down[l]:
                    g_above = gx[:, H : 2 * H]
                    gh[l + 1] = torch.addcmul(gh[l + 1], g_above, z_prev)
                    part = (g_above * h_at(t - 1, l + 1)).sum(1, keepdim=True)
                    g_zprev = part if g_zprev is None else g_zprev + part
                    col = 2 * H
                if l > 0:
                    g_below = gx[:, col : col + H]
                    gh[l - 1] = torch.addcmul(gh[l - 1], g_below, z_in)
                    part = (g_below * self.Ht[l - 1][t]).sum(1, keepdim=True)
                    if g_zin is not None:
                        part = part + g_zin
                    gz[l - 1] = gz[l - 1] + part
                gz[l] = torch.zeros_like(gz[l]) if g_zprev is None else g_zprev
        grad_w, grad_b = [], []
        for l in range(K):
            X, d = self.X[l].flatten(0, 1), dS[l].flatten(0, 1)
            if self.used[l] is not None:  # leave out the rows that were skipped
                rows = self.used[l].flatten().nonzero().squeeze(1)
                X, d = X.index_select(0, rows), d.index_select(0, rows)
            grad_w.append((d.t() @ X).t())  # 1.4x faster here than X.t() @ d
            if l > 0:
                grad_b.append(d.sum(0))
        return dS[0], torch.stack(gh), torch.stack(gc), torch.cat(gz, dim=1).t(), grad_w, grad_b

    def skipped_backward(self, t, l, rows, gh, gc, g_hl, c_prev, dS):
        """Backward of a :meth:`skipping_cell` step (imposed boundaries): returns the new
        (d h_{t-1}, d c_{t-1}) of layer l and adds the working rows' share to the layers
        above and below. COPY rows pass d h and d c through unchanged."""
        spec = self.spec
        H = spec.H
        new_gh, new_gc = g_hl.clone(), gc[l].clone()
        if not rows.numel():
            return new_gh, new_gc
        pick = lambda x: x.index_select(0, rows)  # noqa: E731
        X = pick(self.Xt[l][t])
        z_prev = pick(self.Zt[t - 1][l])
        z_in = pick(self.Zt[t][l - 1])
        flush = z_prev if spec.detector[l] else None
        ds = X.new_empty(rows.numel(), self.A[l].size(-1))
        A, tc = pick(self.At[l][t]), pick(self.TCt[l][t])
        g_c_prev, carry, _, _ = _cell_backward(
            spec, l, A, tc, pick(c_prev), X[:, :H], flush, z_in, pick(g_hl), pick(gc[l]), None, ds
        )
        dS[l][t].index_copy_(0, rows, ds)
        gx = self.mm[l].backward(ds)
        new_gh.index_copy_(0, rows, gx[:, :H] + carry)
        new_gc.index_copy_(0, rows, g_c_prev)
        col = H
        if spec.top_down[l]:
            gh[l + 1] = gh[l + 1].index_add(0, rows, gx[:, H : 2 * H] * z_prev)
            col = 2 * H
        gh[l - 1] = gh[l - 1].index_add(0, rows, gx[:, col : col + H] * z_in)
        return new_gh, new_gc


class _Sequence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, spec, bottom_up, h0, c0, z0, imposed, *params):  # type: ignore[override]
        K, (T, B, _) = spec.K, bottom_up.shape
        matmuls = [StepMatmul(w, B, pack=T >= PACK_FROM) for w in params[:K]]
        loop = Loop(spec, bottom_up, h0, c0, z0, imposed, matmuls, list(params[K:]), keep=True)
        loop.run()
        ctx.loop = loop
        return loop.outputs()

    @staticmethod
    def backward(ctx, g_out, g_h, g_c, g_z, g_bounds):  # type: ignore[override]
        loop = ctx.loop  # kept (not deleted) so that backward can run again with retain_graph
        g_bu, g_h0, g_c0, g_z0, grad_w, grad_b = loop.backward(g_out, g_h, g_c, g_z, g_bounds)
        return None, g_bu, g_h0, g_c0, g_z0, None, *grad_w, *grad_b


def fused_forward(
    rnn, input: Tensor, state, imposed: Tensor | None
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The HM-LSTM forward (time-major, no layer norm) through the fast loop.

    Returns output (T, B, K, H), h (K, B, H), c (K, B, H), z (K, B), boundaries (T, B, K).
    """
    T, B, _ = input.shape
    spec = Spec(rnn, rnn.training, input.device)
    if imposed is not None:
        imposed = imposed.to(input.dtype)
    tensors = (input, *state, *rnn.parameters())
    if torch.is_grad_enabled() and any(x.requires_grad for x in tensors):
        weight_ih0, bias0, weights, biases = _loop_weights(rnn, input.device)
        bottom_up = torch.addmm(bias0, input.reshape(T * B, -1), weight_ih0).view(T, B, -1)
        args = (state.h, state.c, state.z, imposed, *weights, *biases)
        return _Sequence.apply(spec, bottom_up, *args)

    # no gradient wanted: the weights in loop order (and packed) are kept while they are unchanged
    params = tuple((p.data_ptr(), p._version) for p in rnn.parameters())
    key = (B, input.device, input.dtype, params)
    cache = getattr(rnn, "_fused_cache", None)
    if cache is None or cache[0] != key:
        weight_ih0, bias0, weights, biases = _loop_weights(rnn, input.device)
        cache = (key, weight_ih0, bias0, [StepMatmul(w, B) for w in weights], biases)
        rnn._fused_cache = cache
    _, weight_ih0, bias0, matmuls, biases = cache
    bottom_up = torch.addmm(bias0, input.reshape(T * B, -1), weight_ih0).view(T, B, -1)
    loop = Loop(spec, bottom_up, state.h, state.c, state.z, imposed, matmuls, biases, keep=False)
    loop.run()
    return loop.outputs()


def _loop_weights(rnn, device: torch.device):
    """Layer 0's (H_in, G_0) input weight and bias, every layer's (N, G) step weight and the
    biases of layers 1..K-1, all with their gate columns in the loop's order."""
    H, K = rnn.hidden_size, rnn.num_layers
    orders = [gate_order(H, rnn.gate_rows(l), device) for l in range(K)]
    scales = []  # the g columns doubled: the loop computes g = tanh(s_g) as 2 sigmoid(2 s_g) - 1
    for l in range(K):
        scale = torch.ones(rnn.gate_rows(l), device=device, dtype=rnn.param("bias", l).dtype)
        scale[3 * H : 4 * H] = 2.0
        scales.append(scale)
    weight_ih0 = (rnn.param("weight_ih", 0)[orders[0]] * scales[0][:, None]).t()
    bias0 = rnn.param("bias", 0)[orders[0]] * scales[0]
    weights = [rnn._step_weight(l)[:, orders[l]] * scales[l] for l in range(K)]
    biases = [rnn.param("bias", l)[orders[l]] * scales[l] for l in range(1, K)]
    return weight_ih0, bias0, weights, biases
