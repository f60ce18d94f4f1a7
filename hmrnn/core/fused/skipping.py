"""The loop's skipping of COPY rows and of closed gates (a mixin of :class:`~.loop.Loop`).

Where a layer copies (z_{t-1}^l = 0 and z_t^{l-1} = 0) its h and c are copied and only the rows
that work are gathered, computed and scattered back; a COPY row still gets its boundary. Where a
gated input (top-down, bottom-up) is closed on most rows, its block is multiplied only for the
open ones. When each is allowed: :meth:`~.loop.Loop.sparse_allowed`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from hmrnn.core.fused import ops
from hmrnn.core.fused.cell import NormC, block_inputs
from hmrnn.core.fused.ln_cell import normalise
from hmrnn.core.fused.weights import StepMatmul

if TYPE_CHECKING:
    from hmrnn.core.fused.cell import LoopSpec

SPARSE_MIN_WEIGHT = 400_000
"""Rows are skipped only in layers whose step weight has at least this many entries (H = 256 and
up): below it a step's multiply is so cheap that gathering and scattering rows costs more (at
H = 128, batch 32, evaluation took 107 ms with skipping against 80 ms without)."""

SPARSE_BELOW = 0.5
"""A layer gathers its working (non-COPY) rows, or the rows of an open gate, when they are at
most this fraction of the batch; above it, the dense step is cheaper than gather and scatter."""


class SkippingCells:
    """The cells of :class:`~.loop.Loop` that leave rows out; they use its buffers and
    weights (the attributes declared here)."""

    spec: LoopSpec
    keep: bool
    imposed: Tensor | None
    T: int
    B: int
    matmuls: list[list[StepMatmul]]
    biases: list[Tensor | None]
    bottom_up_t: tuple[Tensor, ...]
    gains: list[Tensor] | None
    norm_c: list[tuple[Tensor, Tensor]] | None
    hidden_t: list[tuple[Tensor, ...]]
    cells_t: list[list[Tensor]]
    inputs_t: list[list[Tensor]]
    gates_t: list[list[Tensor]]
    tanh_cells_t: list[list[Tensor]]
    worked: dict[tuple[int, int], Tensor]
    used: list[Tensor | None]

    def sparse_inputs(
        self,
        t: int,
        l: int,
        h_prev: Tensor,
        z_prev: Tensor,
        above: Tensor | None,
        below: Tensor | None,
        z_in: Tensor | None,
    ) -> Tensor | None:
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
        mm = self.matmuls[l][0]
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

    def normed_skipping_cell(
        self, t: int, l: int, h: list[Tensor], c: list[Tensor], z: list[Tensor], copy: Tensor
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """:meth:`skipping_cell` with layer norm (without autograd): the working rows through
        :meth:`normed_cell`'s arithmetic; a COPY row's boundary reads its recurrent projection
        alone (its top-down and bottom-up gates are closed), normalised over the whole row."""
        spec, H = self.spec, self.spec.H
        assert self.gains is not None and self.norm_c is not None
        h_prev, c_prev = h[l], c[l]
        rows = (~copy).nonzero().squeeze(1)
        h_new, c_new = self.hidden_t[l][t], self.cells_t[l][0]
        h_new.copy_(h_prev)
        c_new.copy_(c_prev)
        z_new = None
        if spec.detector[l] and self.imposed is None:
            z_new = h_prev.new_empty(h_prev.size(0), 1)
        if rows.numel():
            pick = lambda x: x.index_select(0, rows)  # noqa: E731
            h_w, c_w, z_w, zin_w = pick(h_prev), pick(c_prev), pick(z[l]), pick(z[l - 1])
            above = pick(h[l + 1]) if spec.top_down[l] else None
            inputs, gates = block_inputs(h_w, z_w, above, pick(h[l - 1]), zin_w)
            P = [mm.forward(x) for mm, x in zip(self.matmuls[l], inputs, strict=True)]
            m, n, G = rows.numel(), len(P), P[0].size(1)
            out = (h_w.new_empty(m, G), *(torch.empty_like(c_w) for _ in range(3)))
            stats, xhat = h_w.new_empty(m, n + 2), [h_w.new_empty(m, G) for _ in range(n)]
            bias = self.biases[l]
            assert bias is not None
            ops.preact_forward(spec, P, self.gains[l], gates, bias, out[0], xhat, stats)
            norm = NormC(*self.norm_c[l], stats[:, n:])
            flush = z_w if spec.detector[l] else None
            z_rows = ops.cell_forward(spec, l, out[0], c_w, h_w, flush, zin_w, out, norm)
            h_new.index_copy_(0, rows, out[3])
            c_new.index_copy_(0, rows, out[1])
            if z_new is not None:
                z_new.index_copy_(0, rows, z_rows)
        still = copy.nonzero().squeeze(1)
        if z_new is not None and still.numel():
            P = self.matmuls[l][0].forward(h_prev.index_select(0, still))
            xhat = torch.empty_like(P)
            normalise(P, xhat)
            bias = self.biases[l]
            assert bias is not None
            s_z = xhat[:, 4 * H :] * self.gains[l][0, 4 * H :] + bias[4 * H :]
            z_new.index_copy_(0, still, spec.estimator.sample(s_z, spec.slope, spec.training))
        return h_new, c_new, z_new

    def skipping_cell(
        self, t: int, l: int, h: list[Tensor], c: list[Tensor], z: list[Tensor], copy: Tensor
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """:meth:`cell` for the rows that do not COPY only (layers above the first); ``copy``
        (B,) marks the COPY rows.

        A COPY row keeps h and c; without imposed boundaries its z is new, from
        s_z = U_z h_{t-1} + b_z (both gated inputs are off), a matrix-vector product.
        Equal to the dense cell up to rounding.
        """
        if self.spec.layer_norm:
            return self.normed_skipping_cell(t, l, h, c, z, copy)
        spec = self.spec
        k = t if self.keep else 0
        h_prev, c_prev = h[l], c[l]
        rows = (~copy).nonzero().squeeze(1)
        h_new, c_new = self.hidden_t[l][t], self.cells_t[l][k]
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
            self._working_rows(t, l, rows, h, c, z, z_new)
        still = copy.nonzero().squeeze(1)
        if z_new is not None and still.numel():
            self._copy_rows_boundary(l, still, h_prev, z_new)
        return h_new, c_new, z_new

    def _working_rows(
        self,
        t: int,
        l: int,
        rows: Tensor,
        h: list[Tensor],
        c: list[Tensor],
        z: list[Tensor],
        z_new: Tensor | None,
    ) -> None:
        """The rows ``rows`` of :meth:`skipping_cell` that do not COPY: gathered, one cell, and
        scattered into h_t, c_t, ``z_new`` (and, with ``keep``, into the backward's buffers)."""
        spec = self.spec
        k = t if self.keep else 0
        pick = lambda x: x.index_select(0, rows)  # noqa: E731
        h_w, c_w, z_w, zin_w = pick(h[l]), pick(c[l]), pick(z[l]), pick(z[l - 1])
        parts = [h_w]
        if spec.top_down[l]:
            parts.append(pick(h[l + 1]) * z_w)
        parts.append(pick(h[l - 1]) * zin_w)
        X = torch.cat(parts, dim=1)
        s = self.matmuls[l][0].forward(X, self.biases[l])
        out = (torch.empty_like(s), *(torch.empty_like(c_w) for _ in range(3)))
        flush = z_w if spec.detector[l] else None
        z_rows = ops.cell_forward(spec, l, s, c_w, h_w, flush, zin_w, out)
        gates, c_rows, tc_rows, h_rows = out
        self.hidden_t[l][t].index_copy_(0, rows, h_rows)
        self.cells_t[l][k].index_copy_(0, rows, c_rows)
        if z_new is not None:
            z_new.index_copy_(0, rows, z_rows)
        if self.keep:
            self.inputs_t[l][t].index_copy_(0, rows, X)
            self.gates_t[l][t].index_copy_(0, rows, gates)
            self.tanh_cells_t[l][t].index_copy_(0, rows, tc_rows)

    def _copy_rows_boundary(self, l: int, still: Tensor, h_prev: Tensor, z_new: Tensor) -> None:
        """z_t of the COPY rows ``still`` into ``z_new``: s_z = U_z h_{t-1} + b_z alone."""
        spec, H = self.spec, self.spec.H
        wt, bias = self.matmuls[l][0].wt, self.biases[l]
        s_z = torch.addmm(bias[4 * H :], h_prev.index_select(0, still), wt[:H, 4 * H :])
        z_new.index_copy_(0, still, spec.estimator.sample(s_z, spec.slope, spec.training))


def gated_multiply(mm: StepMatmul, x: Tensor, gate: Tensor | None) -> Tensor:
    """x's projection (M, G) for the rows whose gate is open, zero for the others, when at most
    :data:`SPARSE_BELOW` of them are open; every row's otherwise (or for an ungated input)."""
    if gate is None:
        return mm.forward(x)
    is_open = (gate != 0).squeeze(1)
    n = int(is_open.sum())
    if n > SPARSE_BELOW * x.size(0):
        return mm.forward(x)
    out = x.new_zeros(x.size(0), mm.wt.size(1))
    if n:
        rows = is_open.nonzero().squeeze(1)
        out.index_copy_(0, rows, mm.forward(x.index_select(0, rows)))
    return out
