"""The forward loop over T steps and K layers, and its skipping of COPY rows.

Each step of each layer writes into preallocated buffers, one (steps, B, ...) tensor per layer and
kind, with per-step views made once. With ``keep`` (autograd) they hold every step, for the
backward of :mod:`hmrnn.core.fused.backward`; without, one step that the next overwrites (h_t is
kept for every step: it is the output).
"""

from __future__ import annotations

import weakref

import torch
from torch import Tensor

from hmrnn.core.fused import ops
from hmrnn.core.fused.cell import LoopSpec, NormC, masks
from hmrnn.core.fused.ln_cell import normalise
from hmrnn.core.fused.pool import POOL
from hmrnn.core.fused.weights import StepMatmul

SPARSE_MIN_WEIGHT = 400_000
"""Rows are skipped only in layers whose step weight has at least this many entries (H = 256 and
up): below it a step's multiply is so cheap that gathering and scattering rows costs more (at
H = 128, batch 32, evaluation took 107 ms with skipping against 80 ms without)."""

SPARSE_BELOW = 0.5
"""A layer gathers its working (non-COPY) rows, or the rows of an open gate, when they are at
most this fraction of the batch; above it, the dense step is cheaper than gather and scatter."""


class Loop:
    """The forward loop over T steps and K layers, optionally keeping what the backward needs.

    Weights and biases are in the loop's gate order (:mod:`hmrnn.core.fused.weights`);
    ``bottom_up`` is layer 0's W x_t + b for every step, (T, B, G_0), in the same order;
    ``state`` is (h0, c0, z0), shapes (K, B, H), (K, B, H), (K, B); ``imposed`` (T, B, K) replaces
    the detectors' z; ``matmuls`` per layer the step multiplies
    (:func:`~hmrnn.core.fused.weights.step_matmuls`); ``norm`` with layer norm the gains (n, G)
    and c's (gain, bias) per layer.

    Buffers, per layer l (``steps`` = T with ``keep``, else 1; N the step weight's rows):
        inputs[l]: (steps, B, N) the gated, concatenated inputs [h_{t-1}, z_{t-1} h_{t-1}^{l+1},
            z_t^{l-1} h_t^{l-1}] of the step multiply (not with layer norm: its inputs are the
            h of ``hidden`` and ``h0``, ungated).
        gates[l]: (steps, B, G) i, f, o, g after their nonlinearity, then the raw s_z.
        cells[l], tanh_cells[l]: (steps, B, H) c_t and tanh(c_t) (of the normalised c_t).
        hidden[l]: (T, B, H) h_t, the output.
        bounds: (T, K, B, 1) z_t as used.
        With layer norm, normed[l]: (n, steps, B, G) each projection normalised (xhat), and
        stats[l]: (steps, B, n + 2) their rstd, then c_t's mean and rstd.
    ``inputs_t[l][t]`` (and ``gates_t``, ``cells_t``, ``tanh_cells_t``, ``hidden_t``,
    ``stats_t``) are their per-step views, ``normed_t[l][t]`` the list of n blocks;
    ``bounds_t[t][l]`` (B, 1).
    """

    def __init__(
        self,
        spec: LoopSpec,
        bottom_up: Tensor,
        state: tuple[Tensor, Tensor, Tensor],
        imposed: Tensor | None,
        matmuls: list[list[StepMatmul]],
        biases: list[Tensor],
        keep: bool,
        norm: tuple[list[Tensor], list[tuple[Tensor, Tensor]]] | None = None,
    ) -> None:
        self.spec = spec
        self.gains, self.norm_c = norm if norm is not None else (None, None)
        self.h0, self.c0, self.z0 = state
        self.imposed = imposed
        self.keep = keep
        self.T, self.B, _ = bottom_up.shape
        self.matmuls = matmuls
        self.biases: list[Tensor | None] = [None, *biases]  # layer 0's is in bottom_up
        self._allocate(bottom_up)
        self.bottom_up_t = bottom_up.unbind(0)
        self.sparse_layer = [sum(m.wt.numel() for m in ms) >= SPARSE_MIN_WEIGHT for ms in matmuls]
        self.worked: dict[tuple[int, int], Tensor] = {}  # (t, l) -> rows computed, if not all
        K = spec.K
        self.used: list[Tensor | None] = [None] * K  # (T, B) rows that enter the weight gradient

    def _allocate(self, like: Tensor) -> None:
        T, B, K, H = self.T, self.B, self.spec.K, self.spec.H
        steps = T if self.keep else 1
        taken: list[Tensor] = []  # returned to the pool when this loop is collected

        def new(*shape: int, zero: bool = False) -> Tensor:
            taken.append(POOL.take(like, *shape, zero=zero))
            return taken[-1]

        ln = self.spec.layer_norm
        self.inputs = [] if ln else [new(steps, B, ms[0].wt.size(0)) for ms in self.matmuls]
        # with layer norm the backward recomputes the gates of layers l > 0 and every tanh(c_t)
        # from what it keeps anyway: one step's room for them (seen at every step)
        self.gates = [
            new(steps if self.stores_gates(l) else 1, B, ms[0].wt.size(1))
            for l, ms in enumerate(self.matmuls)
        ]
        self.cells = [new(steps, B, H) for _ in range(K)]
        self.tanh_cells = [new(1 if ln else steps, B, H) for _ in range(K)]
        self.hidden = [new(T, B, H) for _ in range(K)]
        self.bounds = new(T, K, B, 1, zero=True)
        # per-step views, made once (indexing inside the loop costs microseconds per call)
        self.inputs_t, self.gates_t, self.cells_t, self.tanh_cells_t, self.hidden_t = (
            [b.unbind(0) if len(b) > 1 else [b[0]] * T for b in buffers]
            for buffers in (self.inputs, self.gates, self.cells, self.tanh_cells, self.hidden)
        )
        self.bounds_t = [zt.unbind(0) for zt in self.bounds.unbind(0)]
        if ln:
            self.normed = [new(len(ms), steps, B, ms[0].wt.size(1)) for ms in self.matmuls]
            self.stats = [new(steps, B, len(ms) + 2) for ms in self.matmuls]
            self.normed_t = [list(zip(*(b.unbind(0) for b in n), strict=True)) for n in self.normed]
            self.stats_t = [st.unbind(0) for st in self.stats]
        weakref.finalize(self, POOL.give, taken)

    def _z_at(self, t: int, l: int) -> Tensor | None:
        """Where the cell may write z_t^l (B, 1): its place in ``bounds``, unless imposed."""
        return self.bounds_t[t][l] if self.imposed is None else None

    def stores_gates(self, l: int) -> bool:
        """Whether the gate activations of layer l are kept for every step (with ``keep``):
        without layer norm, and for layer 0 (whose s has the bottom-up term, not kept)."""
        return not self.spec.layer_norm or l == 0

    def run(self) -> None:
        """Every step of every layer; the last h, c, z go to ``h_last``, ``c_last``, ``z_last``."""
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
                if z_new is not None and z_new is not self.bounds_t[t][l]:
                    self.bounds_t[t][l].copy_(z_new)
                z[l] = self.bounds_t[t][l]
        self.h_last, self.c_last, self.z_last = h, c, z
        del self.bottom_up_t  # the backward does not read it: its memory goes with the caller's

    def outputs(self) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """output (T, B, K, H), h (K, B, H), c (K, B, H), z (K, B), boundaries (T, B, K)."""
        output = torch.stack(self.hidden, dim=2)
        h = torch.stack(self.h_last)
        c = torch.stack(self.c_last)
        z = torch.cat(self.z_last, dim=1).t().contiguous()
        bounds = (
            self.bounds.squeeze(-1).transpose(1, 2).clone(memory_format=torch.contiguous_format)
        )
        return output, h, c, z, bounds  # new tensors: the buffers go back to the pool

    def sparse_allowed(self, t: int) -> bool:
        """Whether step t may leave out the work of COPY rows (and of closed gates).

        Without autograd always (but for random draws, :meth:`BoundaryEstimator.is_random`, which
        must match the dense path exactly). With autograd only for imposed boundaries after the
        first step: then nothing needs a COPY row's gates (z is given, so no gradient reaches the
        masks; at t = 0 the initial state's z may still want one).
        """
        if not self.spec.skip_copy:
            return False
        if self.spec.layer_norm:  # with layer norm: without autograd only
            return not self.keep
        return not self.keep or (self.imposed is not None and t > 0)

    def cell(
        self, t: int, l: int, h: list[Tensor], c: list[Tensor], z: list[Tensor]
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Layer l at step t from the latest h, c, z (B, H), (B, H), (B, 1) of every layer
        (layers below l already at step t): writes h_t and returns (h_t, c_t, z_t or None)."""
        spec = self.spec
        k = t if self.keep else 0
        z_prev, h_prev, c_prev = z[l], h[l], c[l]
        flush = z_prev if spec.detector[l] else None
        z_in = None if l == 0 or not spec.hierarchical else z[l - 1]
        above = h[l + 1] if spec.top_down[l] else None
        below = None if l == 0 else h[l - 1]
        sparse = self.sparse_layer[l] and self.sparse_allowed(t)
        if sparse and z_in is not None:
            copy = masks(flush, z_in)[1].squeeze(1) == 1.0
            working = int(copy.numel() - copy.sum())
            if working <= SPARSE_BELOW * copy.numel():
                return self.skipping_cell(t, l, h, c, z, copy)
        if spec.layer_norm:
            args = (h_prev, c_prev, z_prev, flush, z_in, above, below)
            return self.normed_cell(t, l, *args, sparse=sparse and not self.keep)
        s = None
        if sparse and not self.keep:
            s = self.sparse_inputs(t, l, h_prev, z_prev, above, below, z_in)
        if s is None:  # one multiply over the gated, concatenated inputs
            X = self.inputs_t[l][k]
            ops.gather(spec, X, h_prev, above, z_prev, below, z_in)
            if l == 0:
                s = self.matmuls[0][0].forward(X, add=self.bottom_up_t[t])
            else:
                s = self.matmuls[l][0].forward(X, self.biases[l])
        out = (self.gates_t[l][k], self.cells_t[l][k], self.tanh_cells_t[l][k], self.hidden_t[l][t])
        z_new = ops.cell_forward(
            spec, l, s, c_prev, h_prev, flush, z_in, out, None, self._z_at(t, l)
        )
        return out[3], out[1], z_new

    def normed_cell(
        self,
        t: int,
        l: int,
        h_prev: Tensor,
        c_prev: Tensor,
        z_prev: Tensor,
        flush: Tensor | None,
        z_in: Tensor | None,
        above: Tensor | None,
        below: Tensor | None,
        sparse: bool = False,
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """:meth:`cell` with layer norm: one multiply per projection, each normalised
        (:mod:`hmrnn.core.fused.ln_cell`); the gates buffer holds s until the cell activates it.
        ``sparse`` (no autograd): a gated projection is multiplied only for the rows whose gate
        is open, when they are few; the others' projection is left zero (their term,
        gate * LN(P), is zero either way)."""
        assert self.norm_c is not None
        k = t if self.keep else 0
        inputs, gates = block_inputs(h_prev, z_prev, above, below, z_in)
        P = [
            gated_multiply(mm, x, gate) if sparse else mm.forward(x)
            for mm, x, gate in zip(self.matmuls[l], inputs, gates, strict=True)
        ]
        out = (self.gates_t[l][k], self.cells_t[l][k], self.tanh_cells_t[l][k], self.hidden_t[l][t])
        stats, n = self.stats_t[l][k], len(P)
        add = self.bottom_up_t[t] if l == 0 else self.biases[l]
        assert add is not None
        assert self.gains is not None
        spec = self.spec
        ops.preact_forward(spec, P, self.gains[l], gates, add, out[0], self.normed_t[l][k], stats)
        norm = NormC(*self.norm_c[l], stats[:, n:])
        z_new = ops.cell_forward(
            spec, l, out[0], c_prev, h_prev, flush, z_in, out, norm, self._z_at(t, l)
        )
        return out[3], out[1], z_new

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
