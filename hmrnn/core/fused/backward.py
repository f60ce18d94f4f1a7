"""Backward through time over what a :class:`~hmrnn.core.fused.loop.Loop` kept, by hand."""

from __future__ import annotations

import torch
from torch import Tensor

from hmrnn.core.fused import ops
from hmrnn.core.fused.cell import NormC, block_inputs
from hmrnn.core.fused.loop import Loop
from hmrnn.core.fused.pool import POOL
from hmrnn.core.fused.weights import onednn_usable

LoopGrads = tuple[Tensor, Tensor, Tensor, Tensor, list[Tensor]]
"""d loss / d (bottom_up (T, B, G_0), h0 (K, B, H), c0 (K, B, H), z0 (K, B)), then d loss / d
each tensor of :meth:`~hmrnn.core.fused.weights.LoopWeights.flat`: per layer the step weight,
the biases of layers 1..K-1, and with layer norm the gains and c's gains and biases."""


WEIGHT_GRAD_ROWS = 512
"""The weight gradients are multiplied every ``ceil(WEIGHT_GRAD_ROWS / B)`` steps, so that
d loss / d s (with layer norm d loss / d P) is kept for that chunk of steps, not for all T:
at H = 512, B = 64 with layer norm that took peak memory from 2.6x nn.LSTM's to 2.0x. Per row
the multiply over 512 rows is about as fast as over the whole sequence (184 against 201
GFLOP/s for (2049 x 512) x (512 x 512) here)."""


WHOLE_BELOW_BYTES = 16 << 20
"""Below this size the gradient buffers of all T steps are kept (the weight gradients in one
multiply per layer): at H = 128, B = 32 without layer norm (13 MB) chunks of 512 rows through
torch's GEMM cost 5 ms of 85 per training step; with layer norm (46 MB) chunks bring the peak
memory from 2.7x nn.LSTM's down."""


def chunk_steps(loop: Loop) -> int:
    """How many steps' d loss / d s (or d P) the backward keeps before it multiplies them into
    the weight gradients: all T when that is small, else :data:`WEIGHT_GRAD_ROWS` rows."""
    if loop.spec.layer_norm:
        per_step = sum(normed[:, 0].numel() for normed in loop.normed)
    else:
        per_step = sum(gates[0].numel() for gates in loop.gates[1:])
    if loop.T * per_step * loop.hidden[0].element_size() <= WHOLE_BELOW_BYTES:
        return loop.T
    return min(loop.T, -(-WEIGHT_GRAD_ROWS // loop.B))


class Backward:
    """Backward through time over the buffers of a :class:`Loop` run with ``keep``.

    Walks the steps in reverse and the layers top down, carrying per layer the gradients of the
    latest h, c (B, H) and z (B, 1) (``g_h``, ``g_c``, ``g_z``), and writes d loss / d s of each
    step into ``g_preact`` (per layer, a chunk of ``chunk`` steps; all T steps for layer 0,
    whose d s is also its bottom-up term's gradient); the weight gradients come from those in
    one multiply per layer and chunk (:data:`WEIGHT_GRAD_ROWS`).
    """

    def __init__(self, loop: Loop) -> None:
        self.loop = loop
        self.spec = loop.spec
        self.g_h: list[Tensor] = []  # per layer (B, H), set by _start
        self.g_c: list[Tensor] = []  # per layer (B, H)
        self.g_z: list[Tensor] = []  # per layer (B, 1)
        self.pooled: list[Tensor] = []  # returned to the pool at the end of run()
        self.chunk = C = chunk_steps(loop)
        self.stacked: dict[int, Tensor] = {}  # per layer, with layer norm on the GPU
        # sums over the chunks; the step weights' as their transposes, (G, N) or (n, G, H)
        self.grad_w: list[Tensor | None] = [None] * self.spec.K
        self.grad_b: list[Tensor | None] = [None] * self.spec.K
        g_s0 = torch.empty_like(loop.gates[0])  # returned: not pooled
        if not self.spec.layer_norm:
            self.g_preact = [g_s0] + [self._take(g[:C]) for g in loop.gates[1:]]
            return
        # with layer norm d loss / d P of a chunk's steps is kept for the weight gradients; d s
        # only for layer 0 (its bottom-up term's gradient), the other layers sum it per step
        assert loop.gains is not None and loop.norm_c is not None
        self.g_proj = [self._take(normed[:, :C]) for normed in loop.normed]
        self.g_proj_t = [list(zip(*(b.unbind(0) for b in g), strict=True)) for g in self.g_proj]
        self.g_preact = [g_s0]
        self.g_s = [torch.empty_like(gates[0]) for gates in loop.gates]
        self.acts = [torch.empty_like(gates[0]) for gates in loop.gates]  # recomputed
        self.tc = torch.empty_like(loop.cells[0][0])
        self.g_bias = [torch.zeros_like(gates[0, 0]) for gates in loop.gates]
        self.g_gains = [torch.zeros_like(g) for g in loop.gains]
        self.g_norm_c = [(torch.zeros_like(w), torch.zeros_like(b)) for w, b in loop.norm_c]

    def run(
        self,
        g_out: Tensor | None,
        g_h: Tensor | None,
        g_c: Tensor | None,
        g_z: Tensor | None,
        g_bounds: Tensor | None,
    ) -> LoopGrads:
        """From the gradients of the loop's outputs (:meth:`Loop.outputs`; None for zeros)."""
        loop, K = self.loop, self.spec.K
        if g_out is not None and self.spec.triton and g_out.stride(-1) != 1:
            g_out = g_out.contiguous()  # the cell reads it by rows (autograd may expand it)
        self._start(g_h, g_c, g_z)
        for t in range(loop.T - 1, -1, -1):
            for l in range(K - 1, -1, -1):
                g_hl, g_zl, g_h2 = self.g_h[l], self.g_z[l], None
                if g_out is not None and self.spec.triton:  # added inside the cell's launch
                    g_h2 = g_out[t, :, l]
                elif g_out is not None:
                    g_hl = g_hl + g_out[t, :, l]
                if loop.imposed is not None:  # no gradient reaches the detector
                    g_zl = None
                elif g_bounds is not None:
                    g_zl = g_zl + g_bounds[t, :, l : l + 1]
                rows = loop.worked.get((t, l))
                if self.spec.layer_norm:
                    self._normed_step(t, l, g_hl, g_zl, g_h2)
                elif rows is None:
                    self._step(t, l, g_hl, g_zl, g_h2)
                else:  # only these rows worked; COPY rows pass gradients on
                    self._skipped_step(t, l, rows, g_hl)
            if t % self.chunk == 0:  # the first step of a chunk: its weight gradients
                stop = min(t + self.chunk, loop.T)
                if self.spec.layer_norm:
                    self._normed_weight_grads(t, stop)
                else:
                    self._weight_grads(t, stop)
        grads: list[Tensor] = [w.transpose(-1, -2) for w in self.grad_w if w is not None]
        grads += [b for b in self.grad_b[1:] if b is not None]
        if self.spec.layer_norm:
            norm_w, norm_b = (list(x) for x in zip(*self.g_norm_c, strict=True))
            grads += [*self.g_bias[1:], *self.g_gains, *norm_w, *norm_b]
        g_h0, g_c0 = torch.stack(self.g_h), torch.stack(self.g_c)
        POOL.give(self.pooled)
        self.pooled = []
        return self.g_preact[0], g_h0, g_c0, torch.cat(self.g_z, dim=1).t(), grads

    def _ds(self, l: int, t: int) -> Tensor:
        """Where d loss / d s of layer l at step t goes (B, G)."""
        return self.g_preact[l][t if l == 0 else t % self.chunk]

    def _add(self, sums: list[Tensor | None], l: int, value: Tensor) -> None:
        sums[l] = value if sums[l] is None else sums[l].add_(value)

    def _take(self, like: Tensor) -> Tensor:
        """A buffer shaped as ``like`` from the pool, returned at the end of :meth:`run`."""
        self.pooled.append(POOL.take(like, *like.shape))
        return self.pooled[-1]

    def _start(self, g_h: Tensor | None, g_c: Tensor | None, g_z: Tensor | None) -> None:
        """The carried gradients at the last step: those of the final state (None: zeros)."""
        loop = self.loop
        self.g_h = _per_layer(g_h, loop.h0)
        self.g_c = _per_layer(g_c, loop.c0)
        if g_z is None:
            self.g_z = [loop.z0.new_zeros(loop.B, 1) for _ in range(self.spec.K)]
        else:
            self.g_z = [x.unsqueeze(1) for x in g_z.clone().unbind(0)]

    def _z_at(self, t: int, l: int) -> Tensor:
        """z_t^l (B, 1); t = -1 is the initial state's."""
        return self.loop.z0[l].unsqueeze(1) if t < 0 else self.loop.bounds_t[t][l]

    def _h_at(self, t: int, l: int) -> Tensor:
        """h_t^l (B, H); t = -1 is the initial state's."""
        return self.loop.h0[l] if t < 0 else self.loop.hidden_t[l][t]

    def _step(
        self, t: int, l: int, g_hl: Tensor, g_zl: Tensor | None, g_h2: Tensor | None = None
    ) -> None:
        """Layer l at step t, every row: d h_t and d z_t (``g_hl`` (+ ``g_h2``), ``g_zl``) to
        the gradients of the step's inputs (h, c, z of step t-1 and the layers around)."""
        loop, spec, H = self.loop, self.spec, self.spec.H
        c_prev = loop.c0[l] if t == 0 else loop.cells_t[l][t - 1]
        z_prev = self._z_at(t - 1, l)
        z_in = None if l == 0 else loop.bounds_t[t][l - 1]
        X, gates, ds = loop.inputs_t[l][t], loop.gates_t[l][t], self._ds(l, t)
        tc, flush = loop.tanh_cells_t[l][t], z_prev if spec.detector[l] else None
        self.g_c[l], carry, g_zin, g_flush = ops.cell_backward(
            spec, gates, tc, c_prev, X[:, :H], flush, z_in, g_hl, self.g_c[l], ds, None,
            loop.bounds_t[t][l], g_zl, g_h2,
        )  # fmt: skip
        gx = loop.matmuls[l][0].backward(ds)
        above = self._h_at(t - 1, l + 1) if spec.top_down[l] else None
        below = loop.hidden_t[l - 1][t] if l > 0 else None
        if loop.matmuls[l][0].backward_wt is not None:  # detector_input_grad=False
            g_flush, g_zin = self._gates_through_z(l, ds, above, below, z_in, g_flush, g_zin)
        blocks = [gx] if spec.native else list(gx.split(H, dim=1))
        ops.scatter(
            spec, l, blocks, carry, self.g_h, self.g_z, above, below, z_prev, z_in, g_zin,
            g_flush,
        )  # fmt: skip

    def _gates_through_z(
        self,
        l: int,
        ds: Tensor,
        above: Tensor | None,
        below: Tensor | None,
        z_in: Tensor | None,
        g_flush: Tensor | None,
        g_zin: Tensor | None,
    ) -> tuple[Tensor | None, Tensor | None]:
        """With the z row's input gradients cut (its column of the backward weight zeroed), what
        the gates z_{t-1}^l (top-down) and z_t^{l-1} (bottom-up) still get through it: d s_z
        times the z row's projection of the gated input, added to ``g_flush`` (which joins
        d z_{t-1}^l) and ``g_zin`` (which joins d z_t^{l-1})."""
        H, wz = self.spec.H, self.loop.matmuls[l][0].wt[:, -1]
        d_sz = ds[:, -1:]
        block = 1
        if above is not None:
            part = d_sz * (above @ wz[H : 2 * H].to(above.dtype)).unsqueeze(1)
            g_flush = part if g_flush is None else g_flush + part
            block = 2
        if below is not None and z_in is not None:
            w = wz[block * H : (block + 1) * H].to(below.dtype)
            part = d_sz * (below @ w).unsqueeze(1)
            g_zin = part if g_zin is None else g_zin + part
        return g_flush, g_zin

    def _normed_step(
        self, t: int, l: int, g_hl: Tensor, g_zl: Tensor | None, g_h2: Tensor | None = None
    ) -> None:
        """:meth:`_step` with layer norm (:meth:`Loop.normed_cell`)."""
        loop, spec = self.loop, self.spec
        c_prev = loop.c0[l] if t == 0 else loop.cells_t[l][t - 1]
        z_prev, h_prev = self._z_at(t - 1, l), self._h_at(t - 1, l)
        z_in = None if l == 0 or not spec.hierarchical else loop.bounds_t[t][l - 1]
        above = self._h_at(t - 1, l + 1) if spec.top_down[l] else None
        below = loop.hidden_t[l - 1][t] if l > 0 else None
        inputs, gates = block_inputs(h_prev, z_prev, above, below, z_in)
        ds = self.g_preact[0][t] if l == 0 else self.g_s[l]
        stats, n = loop.stats_t[l][t], len(inputs)
        assert loop.norm_c is not None
        norm = NormC(*loop.norm_c[l], stats[:, n:], loop.cells_t[l][t], *self.g_norm_c[l])
        flush = z_prev if spec.detector[l] else None
        normed = list(loop.normed_t[l][t])
        assert loop.gains is not None
        tc, kept = self.tc, loop.stores_gates(l)  # the gates recomputed where not kept
        acts = loop.gates_t[l][t] if kept else self.acts[l]
        add, into = (None, None) if kept else (loop.biases[l], acts)
        again = (normed, loop.gains[l], gates, add, into)  # recomputed first
        g_P = self.g_proj_t[l][t % self.chunk]
        (self.g_c[l], carry, g_zin, g_flush), g_gates = ops.normed_cell_backward(
            spec, acts, tc, c_prev, h_prev, flush, z_in, g_hl, self.g_c[l], ds, norm,
            loop.bounds_t[t][l], g_zl, g_h2, again, stats, self.g_gains[l], list(g_P),
            self.g_bias[l] if l > 0 else None,
        )  # fmt: skip
        if spec.triton:  # the projections' input gradients in one batched multiply
            W = self._stacked(l)
            gx = list(torch.bmm(self.g_proj[l][:, t % self.chunk].to(W.dtype), W).unbind(0))
        else:
            gx = [mm.backward(dP) for mm, dP in zip(loop.matmuls[l], g_P, strict=True)]
        ops.scatter(
            spec, l, gx, carry, self.g_h, self.g_z, above, below, z_prev, z_in, g_zin, g_flush,
            g_gates,
        )  # fmt: skip

    def _stacked(self, l: int) -> Tensor:
        """Layer l's projection weights transposed and stacked, (n, G, H): d loss / d P of a
        step (n, B, G) times it is the inputs' gradients (n, B, H), in one launch."""
        if l not in self.stacked:
            self.stacked[l] = torch.stack([mm.backward_weight().t() for mm in self.loop.matmuls[l]])
        return self.stacked[l]

    def _normed_weight_grads(self, start: int, stop: int) -> None:
        """With layer norm: d loss / d step weight (n, H, G) of steps ``start..stop-1`` added to
        ``grad_w``, one multiply per projection."""
        loop = self.loop
        for l in range(self.spec.K):
            xs = [self._hidden(l, start - 1, stop - 1)]
            if self.spec.top_down[l]:
                xs.append(self._hidden(l + 1, start - 1, stop - 1))
            if l > 0:
                xs.append(loop.hidden[l - 1][start:stop])
            dP = self.g_proj[l][:, : stop - start]
            if self.grad_w[l] is None:
                G, H = dP.size(-1), xs[0].size(-1)
                self.grad_w[l] = dP.new_zeros(len(xs), G, H)
            acc = self.grad_w[l]
            assert acc is not None
            for k, (d, x) in enumerate(zip(dP, xs, strict=True)):
                acc[k] += weight_grad(d.flatten(0, 1), x.flatten(0, 1))

    def _hidden(self, l: int, start: int, stop: int) -> Tensor:
        """h^l of steps ``start..stop-1`` (T', B, H); step -1 is the initial state's."""
        hidden = self.loop.hidden[l]
        if start >= 0:
            return hidden[start:stop]
        return torch.cat([self.loop.h0[l].unsqueeze(0), hidden[:stop]])

    def _skipped_step(self, t: int, l: int, rows: Tensor, g_hl: Tensor) -> None:
        """Backward of a :meth:`Loop.skipping_cell` step (imposed boundaries, l > 0): the
        working ``rows`` as in :meth:`_step`, gathered; COPY rows pass d h and d c through
        unchanged, and no gradient reaches z_{t-1}."""
        loop, spec, H = self.loop, self.spec, self.spec.H
        new_gh, new_gc = g_hl.clone(), self.g_c[l].clone()
        if rows.numel():
            c_prev = loop.c0[l] if t == 0 else loop.cells_t[l][t - 1]
            pick = lambda x: x.index_select(0, rows)  # noqa: E731
            X = pick(loop.inputs_t[l][t])
            z_prev, z_in = pick(loop.bounds_t[t - 1][l]), pick(loop.bounds_t[t][l - 1])
            flush = z_prev if spec.detector[l] else None
            ds = X.new_empty(rows.numel(), loop.gates[l].size(-1))
            gates, tc = pick(loop.gates_t[l][t]), pick(loop.tanh_cells_t[l][t])
            g_h_rows, g_c_rows = pick(g_hl), pick(self.g_c[l])
            g_c_prev, carry, _, _ = ops.cell_backward(
                spec, gates, tc, pick(c_prev), X[:, :H], flush, z_in, g_h_rows, g_c_rows, ds,
                None, None, None,
            )  # fmt: skip
            self._ds(l, t).index_copy_(0, rows, ds)
            gx = loop.matmuls[l][0].backward(ds)
            new_gh.index_copy_(0, rows, gx[:, :H] + carry)
            new_gc.index_copy_(0, rows, g_c_prev)
            col = H
            if spec.top_down[l]:
                self.g_h[l + 1] = self.g_h[l + 1].index_add(0, rows, gx[:, H : 2 * H] * z_prev)
                col = 2 * H
            self.g_h[l - 1] = self.g_h[l - 1].index_add(0, rows, gx[:, col : col + H] * z_in)
        self.g_h[l], self.g_c[l] = new_gh, new_gc
        self.g_z[l] = torch.zeros_like(self.g_z[l])

    def _weight_grads(self, start: int, stop: int) -> None:
        """d loss / d step weight and (layers 1..K-1) d loss / d bias of steps
        ``start..stop-1`` added to ``grad_w`` and ``grad_b``, leaving out the rows that were
        skipped."""
        loop = self.loop
        for l in range(self.spec.K):
            X = loop.inputs[l][start:stop].flatten(0, 1)
            d = self.g_preact[l][start:stop] if l == 0 else self.g_preact[l][: stop - start]
            d = d.flatten(0, 1)
            used = loop.used[l]
            if used is not None:
                rows = used[start:stop].flatten().nonzero().squeeze(1)
                X, d = X.index_select(0, rows), d.index_select(0, rows)
            self._add(self.grad_w, l, weight_grad(d, X))
            if l > 0:
                self._add(self.grad_b, l, d.sum(0))


ONEDNN_ROWS_UP_TO = 4096
"""Weight gradients over at most this many rows multiply through oneDNN (float32, CPU): over
512-1024 rows 1.4-1.5x faster here than torch's GEMM, copies included (278-308 against about
200 GFLOP/s for (2049 x rows) x (rows x 512)); over the whole sequence (6400 rows) no faster."""


def weight_grad(d: Tensor, x: Tensor) -> Tensor:
    """d^T x, (G, N), from d loss / d s ``d`` (rows, G) and the inputs ``x`` (rows, N): a weight
    gradient, transposed. Inputs kept in a lower precision (mixed precision: bf16) multiply in
    it; the result is in ``d``'s dtype."""
    if x.dtype != d.dtype:
        return (d.to(x.dtype).t() @ x).to(d.dtype)
    if d.size(0) <= ONEDNN_ROWS_UP_TO and onednn_usable(d):
        try:
            lin = torch.ops.mkldnn._linear_pointwise
            return lin(d.t().contiguous(), x.t().contiguous(), None, "none", [], "")
        except RuntimeError:  # the private op changed: torch's GEMM (as StepMatmul does)
            pass
    return d.t() @ x  # 1.4x faster here than (x.t() @ d).t()


def _per_layer(grad: Tensor | None, like: Tensor) -> list[Tensor]:
    """A (K, B, H) gradient as K (B, H) tensors of its own (zeros for None)."""
    if grad is None:
        return [torch.zeros_like(x) for x in like.unbind(0)]
    return list(grad.clone().unbind(0))
