"""The HM-LSTM's forward pass built from autograd operations (model.md §§1, 2, 4).

:meth:`hmrnn.core.hmlstm.HMLSTM.forward` runs it with layer norm, and without layer norm when
``HMLSTM.fused = False``; otherwise the hand-written loop of :mod:`hmrnn.core.fused` computes the
same equations. One step of layer l computes one joint pre-activation

    s = U h_{t-1}^l + z_{t-1}^l * V h_{t-1}^{l+1} + z_t^{l-1} * W h_t^{l-1} + b      # (B, 4H+1)

with a single multiply over the gated, concatenated inputs (with layer norm the three projections
are normalised separately, so they run as one batched multiply instead). Layer 0's bottom-up
projection ``W x_t`` is computed for the whole sequence in one multiply.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from hmrnn.core.boundary import BoundaryEstimator, boundary

if TYPE_CHECKING:
    from hmrnn.core.hmlstm import HMLSTM, HMLSTMState

LN_EPS = 1e-5


def layer_norm(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """Layer norm over the last dimension that maps an all-zero row to zero with zero gradient.

    An all-zero row is an input that is absent, not small: the projection of the all-zero initial
    state (or of a layer that has not updated since), or a cell that has never been written. Plain
    layer norm maps it to zero too, but its derivative there is ``weight / sqrt(eps)`` (316x at
    eps = 1e-5); through the mask products such rows turned that into gradients 1e5-1e6 times
    larger than without layer norm at initialisation. Rows with any non-zero entry are untouched.

    Shape: x (..., N); weight and bias (N,).
    """
    out = F.layer_norm(x, (x.size(-1),), weight, bias, LN_EPS)
    present = (x != 0).any(dim=-1, keepdim=True)
    return out * present if bias is None else torch.where(present, out, bias)


class Taps:
    """Where the boundaries' gradients go (hmrnn.core.diagnostics): with taps, the autograd
    forward records each layer's z-row pre-activation and passes every z through a separate
    alias per use, so that a gradient with respect to the aliases splits d loss / d z by path:

    - ``masks``: z as an operation mask (FLUSH of its own layer at the next step, and the
      UPDATE / COPY choice of the layer above at the same step);
    - ``top_down``: z_{t-1}^l gating h_{t-1}^{l+1} in layer l's pre-activation;
    - ``bottom_up``: z_t^l gating h_t^l in layer l+1's pre-activation.

    ``preacts[l]`` and ``uses[l][path]`` are lists over steps; ``zs[l]`` the z_t^l produced;
    ``terms[l][source]`` (detached) s_z's part from each source (:func:`z_terms`).
    """

    PATHS = ("masks", "top_down", "bottom_up")
    SOURCES = ("recurrent", "top_down", "bottom_up")

    def __init__(self, num_layers: int) -> None:
        self.preacts: list[list[Tensor]] = [[] for _ in range(num_layers)]
        self.zs: list[list[Tensor]] = [[] for _ in range(num_layers)]
        self.uses: list[dict[str, list[Tensor]]] = [
            {path: [] for path in self.PATHS} for _ in range(num_layers)
        ]
        self.terms: list[dict[str, list[Tensor]]] = [
            {source: [] for source in self.SOURCES} for _ in range(num_layers)
        ]

    def use(self, l: int, path: str, z: Tensor) -> Tensor:
        """An alias of layer l's ``z`` for one use along ``path`` (recorded if it carries a
        gradient)."""
        if not z.requires_grad:
            return z
        alias = z.view_as(z)
        self.uses[l][path].append(alias)
        return alias


def autograd_forward(
    rnn: HMLSTM,
    input: Tensor,
    state: HMLSTMState,
    boundaries: Tensor | None,
    taps: Taps | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """:meth:`HMLSTM.forward` built from autograd operations, time-major, as
    :func:`hmrnn.core.fused.fused_forward`: output (T, B, K, H), h and c (K, B, H),
    z (K, B), boundaries (T, B, K). ``taps`` records where the boundaries' gradients go
    (:class:`Taps`)."""
    T, B, _ = input.shape
    K, H = rnn.num_layers, rnn.hidden_size
    h = list(state.h.unbind(0))  # per layer (B, H)
    c = list(state.c.unbind(0))
    z = [zl.unsqueeze(1) for zl in state.z.unbind(0)]  # per layer (B, 1)
    imposed = None
    if boundaries is not None:
        imposed = boundaries.to(input.dtype).unsqueeze(-1).unbind(0)  # T x (B, K, 1)
    weights = [rnn.step_weight(l) for l in range(K)]
    estimator = rnn.estimator
    bottom_up = input_projection(rnn, input)  # T x (B, G_0), bias included
    zero = input.new_zeros(B, 1)

    outs: list[Tensor] = []
    zs: list[Tensor] = []
    for t in range(T):
        for l in range(K):
            below = bottom_up[t] if l == 0 else h[l - 1]
            z_below = None if l == 0 else z[l - 1]
            above = h[l + 1] if rnn.has_top_down(l) else None
            h[l], c[l], z_new = cell(
                rnn, l, weights[l], h[l], c[l], z[l], above, below, z_below, estimator, taps
            )
            if not rnn.has_detector(l):
                z_new = zero
            elif imposed is not None:
                z_new = imposed[t][:, l]
            if taps is not None and rnn.has_detector(l):
                taps.zs[l].append(z_new)
            z[l] = z_new
            outs.append(h[l])
            zs.append(z_new)

    output = torch.stack(outs).view(T, K, B, H).transpose(1, 2)
    bounds = torch.stack(zs).view(T, K, B).transpose(1, 2)
    return output, torch.stack(h), torch.stack(c), torch.cat(z, dim=1).t(), bounds


def input_projection(rnn: HMLSTM, input: Tensor) -> tuple[Tensor, ...]:
    """Layer 0's bottom-up term W x_t + b for all steps in one multiply: T x (B, G_0)."""
    T, B, _ = input.shape
    weight, bias = rnn.param("weight_ih", 0), rnn.param("bias", 0)
    x = input.reshape(T * B, -1)
    if rnn.has_detector(0) and not rnn.detector_input_grad:  # the z row reads x detached
        z = 4 * rnn.hidden_size
        P = torch.cat([x @ weight[:z].t(), x.detach() @ weight[z:].t()], dim=1)
        proj = (layer_norm(P, rnn.param("ln_ih", 0)) if rnn.layer_norm else P) + bias
    elif rnn.layer_norm:
        proj = layer_norm(x @ weight.t(), rnn.param("ln_ih", 0)) + bias
    else:
        proj = torch.addmm(bias, x, weight.t())
    return proj.view(T, B, -1).unbind(0)


def cell(
    rnn: HMLSTM,
    l: int,
    weight: Tensor,
    h_prev: Tensor,
    c_prev: Tensor,
    z_prev: Tensor,
    above: Tensor | None,
    below: Tensor,
    z_below: Tensor | None,
    estimator: BoundaryEstimator,
    taps: Taps | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """One step of layer l: returns h_t, c_t (B, H) and the detector's z_t (B, 1).

    ``below`` is the bottom-up input h_t^{l-1} (for layer 0 the precomputed W x_t + b);
    ``z_below`` is None for layer 0 (z^0 = 1); ``estimator`` is :attr:`HMLSTM.estimator`, looked
    up once per forward; ``taps`` (:class:`Taps`) splits the boundaries' gradients by path.
    """
    H = rnn.hidden_size
    z_gate, z_below_gate = z_prev, z_below
    if taps is not None:
        z_gate = taps.use(l, "top_down", z_prev) if above is not None else z_prev
        if z_below is not None:
            z_below_gate = taps.use(l - 1, "bottom_up", z_below)
            z_below = taps.use(l - 1, "masks", z_below)
        if rnn.has_detector(l):
            z_prev = taps.use(l, "masks", z_prev)
    s = preactivation(rnn, l, weight, h_prev, z_gate, above, below, z_below_gate)  # (B, G)
    s_z = s[:, 4 * H :]
    if taps is not None and rnn.has_detector(l):
        taps.preacts[l].append(s_z)
        parts = z_terms(rnn, l, weight, h_prev, z_gate, above, below, z_below_gate)
        for source, part in parts.items():
            taps.terms[l][source].append(part)
    i = torch.sigmoid(s[:, :H])
    f = torch.sigmoid(s[:, H : 2 * H])
    g = torch.tanh(s[:, 2 * H : 3 * H])
    o = torch.sigmoid(s[:, 3 * H : 4 * H])
    z_new = None
    if rnn.has_detector(l):
        z_new = boundary(s_z, rnn.slope, estimator, rnn.training)

    flush = z_prev if rnn.has_detector(l) else None
    if flush is not None and not rnn.grad_through_ops:
        flush = flush.detach()
    z_in = z_below
    if z_in is not None and not rnn.grad_through_ops:
        z_in = z_in.detach()

    if z_in is None:  # layer 0: z^0 = 1, so never COPY; UPDATE keeps f * c, FLUSH drops it
        keep = f if flush is None else (1.0 - flush) * f
        c = torch.addcmul(keep * c_prev, i, g)
        return o * torch.tanh(norm_c(rnn, l, c)), c, z_new
    update = z_in if flush is None else (1.0 - flush) * z_in
    copy = 1.0 - z_in if flush is None else (1.0 - flush) * (1.0 - z_in)
    act = 1.0 - copy  # flush + update
    c = torch.addcmul((update * f + copy) * c_prev, act, i * g)
    h = torch.addcmul(copy * h_prev, act, o * torch.tanh(norm_c(rnn, l, c)))
    return h, c, z_new


@torch.no_grad()
def z_terms(
    rnn: HMLSTM,
    l: int,
    weight: Tensor,
    h_prev: Tensor,
    z_prev: Tensor,
    above: Tensor | None,
    below: Tensor,
    z_below: Tensor | None,
) -> dict[str, Tensor]:
    """s_z's part (B, 1) from each source, as :func:`preactivation` sums it: ``recurrent``
    (W_hh h_{t-1}^l), ``top_down`` (z_{t-1}^l W_td h_{t-1}^{l+1}) and ``bottom_up``
    (z_t^{l-1} W_ih h_t^{l-1}, layer 0's W_ih x_t), each layer-normalised and times its gain
    with layer norm; the bias is the rest."""
    z = slice(4 * rnn.hidden_size, 4 * rnn.hidden_size + 1)
    inputs, gates, kinds = projection_inputs(l, h_prev, z_prev, above, below, z_below)
    out = {"bottom_up": below[:, z] - rnn.param("bias", l)[z]} if l == 0 else {}
    if rnn.layer_norm:
        proj = torch.bmm(torch.stack(inputs), weight)
        gains = [rnn.param(f"ln_{k}", l) for k in kinds]
        parts = [layer_norm(p, g)[:, z] for p, g in zip(proj, gains, strict=True)]
    else:
        parts, row = [], 0
        for x in inputs:
            parts.append(x @ weight[row : row + x.size(1), z])
            row += x.size(1)
    for kind, part, zg in zip(kinds, parts, gates, strict=True):
        out[SOURCE_OF[kind]] = part if zg is None else zg * part
    return out


SOURCE_OF = {"hh": "recurrent", "td": "top_down", "ih": "bottom_up"}
"""A projection's kind (its parameters' infix) -> its name among :attr:`Taps.SOURCES`."""


def projection_inputs(
    l: int,
    h_prev: Tensor,
    z_prev: Tensor,
    above: Tensor | None,
    below: Tensor,
    z_below: Tensor | None,
) -> tuple[list[Tensor], list[Tensor | None], list[str]]:
    """Layer l's projected inputs in the step weight's order, each one's gate (None: not
    gated) and kind (``hh`` recurrent, ``td`` top-down, ``ih`` bottom-up; layer 0's bottom-up
    term is computed before the loop)."""
    inputs, gates, kinds = [h_prev], [None], ["hh"]
    if above is not None:
        inputs, gates, kinds = [*inputs, above], [*gates, z_prev], [*kinds, "td"]
    if l > 0:
        inputs, gates, kinds = [*inputs, below], [*gates, z_below], [*kinds, "ih"]
    return inputs, gates, kinds


def preactivation(
    rnn: HMLSTM,
    l: int,
    weight: Tensor,
    h_prev: Tensor,
    z_prev: Tensor,
    above: Tensor | None,
    below: Tensor,
    z_below: Tensor | None,
) -> Tensor:
    """s_t^l (B, G): one (batched) multiply over the gated inputs."""
    inputs, gates, names = projection_inputs(l, h_prev, z_prev, above, below, z_below)
    cut = rnn.has_detector(l) and not rnn.detector_input_grad
    z = 4 * rnn.hidden_size  # the z row's column
    if not rnn.layer_norm:
        gated = [x if zg is None else zg * x for x, zg in zip(inputs, gates, strict=True)]
        base = below if l == 0 else rnn.param("bias", l)
        X = torch.cat(gated, dim=1)
        if not cut:
            return torch.addmm(base, X, weight)
        # the z column: each projection of its input detached, then gated (the gates are not
        # the projections' inputs: as the reference); layer 0's `below` is cut already
        s_z, row = 0.0, 0
        for x, zg in zip(inputs, gates, strict=True):
            part = x.detach() @ weight[row : row + x.size(1), z:]
            s_z, row = s_z + (part if zg is None else zg * part), row + x.size(1)
        return base + torch.cat([X @ weight[:, :z], s_z], dim=1)
    stacked = torch.stack(inputs)
    proj = torch.bmm(stacked, weight)  # (n, B, G)
    if cut:
        proj = torch.cat([proj[..., :z], torch.bmm(stacked.detach(), weight[..., z:])], dim=-1)
    s = below if l == 0 else rnn.param("bias", l)
    for k, (name, zg) in enumerate(zip(names, gates, strict=True)):
        normed = layer_norm(proj[k], rnn.param(f"ln_{name}", l))
        s = s + (normed if zg is None else zg * normed)
    return s


def norm_c(rnn: HMLSTM, l: int, c: Tensor) -> Tensor:
    """c_t as its tanh reads it: layer-normalised with layer norm, unchanged without."""
    if not rnn.layer_norm:
        return c
    return layer_norm(c, rnn.param("ln_c_weight", l), rnn.param("ln_c_bias", l))


__all__ = ["LN_EPS", "Taps", "autograd_forward", "layer_norm"]
