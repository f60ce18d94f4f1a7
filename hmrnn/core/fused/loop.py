"""The forward loop over T steps and K layers (its skipping of COPY rows: :mod:`.skipping`).

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
from hmrnn.core.fused.cell import LoopSpec, NormC, block_inputs, masks
from hmrnn.core.fused.pool import POOL, capturing
from hmrnn.core.fused.skipping import (
    SPARSE_BELOW,
    SPARSE_MIN_WEIGHT,
    SkippingCells,
    gated_multiply,
)
from hmrnn.core.fused.weights import StepMatmul


class Loop(SkippingCells):
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
        hidden[l]: (T, B, H) h_t: views of ``output`` (T, B, K, H), returned as it is (not
            from the pool).
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
        low = spec.mm_dtype
        # the step multiplies' biases (mixed precision: in the multiplies' dtype, cast once)
        self.mm_biases = [b if b is None or low is None else b.to(low) for b in self.biases]
        self._allocate(self.h0)  # the state's dtype (bottom_up may be bf16 under autocast)
        self.bottom_up_t = bottom_up.unbind(0)
        self.sparse_layer = [sum(m.wt.numel() for m in ms) >= SPARSE_MIN_WEIGHT for ms in matmuls]
        self.worked: dict[tuple[int, int], Tensor] = {}  # (t, l) -> rows computed, if not all
        K = spec.K
        self.used: list[Tensor | None] = [None] * K  # (T, B) rows that enter the weight gradient

    def _allocate(self, like: Tensor) -> None:
        T, B, K, H = self.T, self.B, self.spec.K, self.spec.H
        steps = T if self.keep else 1
        taken: list[Tensor] = []  # returned to the pool when this loop is collected

        def new(*shape: int, zero: bool = False, of: Tensor = like) -> Tensor:
            taken.append(POOL.take(of, *shape, zero=zero))
            return taken[-1]

        ln = self.spec.layer_norm
        # the multiplies' inputs in their dtype (mixed precision: the gather casts)
        low = like if self.spec.mm_dtype is None else like.new_empty(0, dtype=self.spec.mm_dtype)
        self.inputs = [] if ln else [new(steps, B, ms[0].wt.size(0), of=low) for ms in self.matmuls]
        # with layer norm the backward recomputes the gates of layers l > 0 and every tanh(c_t)
        # from what it keeps anyway: one step's room for them (seen at every step)
        self.gates = [
            new(steps if self.stores_gates(l) else 1, B, ms[0].wt.size(1))
            for l, ms in enumerate(self.matmuls)
        ]
        self.cells = [new(steps, B, H) for _ in range(K)]
        self.tanh_cells = [new(1 if ln else steps, B, H) for _ in range(K)]
        self.output = like.new_empty(T, B, K, H)
        self.hidden = list(self.output.unbind(2))
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
        if not capturing(like):  # a CUDA graph's buffers stay its own (fused.graphs)
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
        output = self.output
        h = torch.stack(self.h_last)
        c = torch.stack(self.c_last)
        z = torch.cat(self.z_last, dim=1).t().contiguous()
        bounds = (
            self.bounds.squeeze(-1).transpose(1, 2).clone(memory_format=torch.contiguous_format)
        )
        return output, h, c, z, bounds  # none of them a pooled buffer

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
                s = self.matmuls[l][0].forward(X, self.mm_biases[l])
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
        pre = (P, self.gains[l], gates, add, list(self.normed_t[l][k]), stats)
        norm = NormC(*self.norm_c[l], stats[:, n:])
        z_new = ops.cell_forward(
            spec, l, out[0], c_prev, h_prev, flush, z_in, out, norm, self._z_at(t, l), pre
        )
        return out[3], out[1], z_new
