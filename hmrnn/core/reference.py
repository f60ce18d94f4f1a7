"""A plain, obviously-correct HM-LSTM: the test oracle for every faster path.

It follows model.md §1 term by term (separate multiplies per projection, the product form of
the COPY / UPDATE / FLUSH table written out) and reads its weights from an :class:`HMLSTM`, so
both compute with the same parameters. Speed is no goal here.
"""

from __future__ import annotations

import torch
from torch import Tensor

from hmrnn.core.boundary import boundary
from hmrnn.core.hmlstm import HMLSTM, HMLSTMState, layer_norm


def reference_forward(
    rnn: HMLSTM,
    input: Tensor,
    state: HMLSTMState | None = None,
    boundaries: Tensor | None = None,
) -> tuple[Tensor, HMLSTMState, Tensor]:
    """Same inputs, outputs and shapes as ``rnn(input, state, boundaries)``.

    One function on purpose: it reads top to bottom like model.md §1, which is what an oracle is
    for; the boundary comes from ``rnn.estimator``, the object the fast paths call too.
    """
    rnn.check_inputs(input, state, boundaries)
    if rnn.batch_first:
        input = input.transpose(0, 1)
        boundaries = None if boundaries is None else boundaries.transpose(0, 1)
    T, B, _ = input.shape
    K, H = rnn.num_layers, rnn.hidden_size
    if state is None:
        state = rnn.zero_state(B, input)
    h = [state.h[l] for l in range(K)]
    c = [state.c[l] for l in range(K)]
    z = [state.z[l].unsqueeze(1) for l in range(K)]
    estimator = rnn.estimator  # the object every path calls (hmrnn.registry.ESTIMATORS)

    def project(kind: str, l: int, x: Tensor) -> Tensor:
        """One projection, layer-normalised on its own when layer norm is on; with
        ``detector_input_grad=False`` its z row reads ``x`` detached."""
        weight = rnn.param(f"weight_{kind}", l)
        out = x @ weight.t()
        if rnn.has_detector(l) and not rnn.detector_input_grad:
            out = torch.cat([x @ weight[: 4 * H].t(), x.detach() @ weight[4 * H :].t()], dim=1)
        if rnn.layer_norm:
            out = layer_norm(out, rnn.param(f"ln_{kind}", l))
        return out

    outputs, used = [], []
    for t in range(T):
        h_t, z_t = [], []
        for l in range(K):
            x_below = input[t] if l == 0 else h_t[l - 1]
            z_below = torch.ones_like(z[l]) if l == 0 else z_t[l - 1]
            s = project("hh", l, h[l]) + rnn.param("bias", l)
            s = s + z_below * project("ih", l, x_below)
            if rnn.has_top_down(l):
                s = s + z[l] * project("td", l, h[l + 1])  # h[l+1] is still h_{t-1}^{l+1}
            i = torch.sigmoid(s[:, 0:H])
            f = torch.sigmoid(s[:, H : 2 * H])
            g = torch.tanh(s[:, 2 * H : 3 * H])
            o = torch.sigmoid(s[:, 3 * H : 4 * H])

            flush = z[l] if rnn.has_detector(l) else torch.zeros_like(z[l])
            zb = z_below
            if not rnn.grad_through_ops:
                flush, zb = flush.detach(), zb.detach()
            update = (1 - flush) * zb
            copy = (1 - flush) * (1 - zb)
            c_new = flush * (i * g) + update * (f * c[l] + i * g) + copy * c[l]
            c_act = c_new
            if rnn.layer_norm:
                c_act = layer_norm(c_new, rnn.param("ln_c_weight", l), rnn.param("ln_c_bias", l))
            h_new = flush * (o * torch.tanh(c_act)) + update * (o * torch.tanh(c_act))
            h_new = h_new + copy * h[l]

            if not rnn.has_detector(l):
                z_new = torch.zeros_like(z[l])
            elif boundaries is not None:
                z_new = boundaries[t, :, l : l + 1].to(input.dtype)
                boundary(s[:, 4 * H :], rnn.slope, estimator, rnn.training)  # same RNG draws
            else:
                z_new = boundary(s[:, 4 * H :], rnn.slope, estimator, rnn.training)
            h_t.append(h_new)
            z_t.append(z_new)
            h[l], c[l] = h_new, c_new
        z = z_t
        outputs.append(torch.stack(h_t, dim=1))  # (B, K, H)
        used.append(torch.cat(z_t, dim=1))  # (B, K)

    output, bounds = torch.stack(outputs), torch.stack(used)
    new_state = HMLSTMState(torch.stack(h), torch.stack(c), torch.cat(z, dim=1).t())
    if rnn.batch_first:
        output, bounds = output.transpose(0, 1), bounds.transpose(0, 1)
    return output, new_state, bounds
