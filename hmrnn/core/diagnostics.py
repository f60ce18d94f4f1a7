"""What the boundary detectors are doing while they learn (issue 18): cheap numbers per layer.

:func:`boundary_diagnostics` runs one forward pass and loss (``loss_of``) through the autograd
implementation with :class:`hmrnn.core.autograd_step.Taps`, takes the gradient of the loss with
respect to the taps only (no parameter's gradient is touched, so it can run beside training,
under DDP too), and returns per detector layer l (keys ``<name>_l{l+1}``, layers counted from 1
as in the other boundary statistics):

- ``z_rate``: the fraction of steps with z_t^l = 1 (the mean of z for soft boundaries);
- ``sz_mean``, ``sz_std``: the z row's pre-activation s_z over rows and steps;
- ``sz_recurrent``, ``sz_top_down``, ``sz_bottom_up``: the mean of s_z's part from each
  source (the layer's own h_{t-1}, the layer above's gated h_{t-1}, the layer below's gated
  h_t or the input; layer-normalised with layer norm); the bias is the rest of ``sz_mean``;
- ``sz_linear``: the fraction of s_z in the hard sigmoid's linear region, |slope s_z| < 1,
  where the straight-through gradient is non-zero (outside it the detector gets nothing);
- ``grad_sz``: mean |d loss / d s_z|, what reaches the detector's pre-activation (and from it
  the z row of the weights);
- ``grad_masks``, ``grad_top_down``, ``grad_bottom_up``: mean |d loss / d z| through each use of
  z (the operation masks; the gate on the layer above's h; the gate of h^l into the layer
  above), over the steps and rows where that use exists;

and ``slope``. The random state is restored afterwards (a Bernoulli detector draws here too), so
a run with diagnostics trains exactly as one without.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from hmrnn.core.autograd_step import Taps

if TYPE_CHECKING:
    from hmrnn.core.hmlstm import HMLSTM


def boundary_diagnostics(rnn: HMLSTM, loss_of: Callable[[], Tensor]) -> dict[str, float]:
    """The numbers of the module doc for one pass of ``loss_of`` (which runs ``rnn``)."""
    K = rnn.num_layers
    taps = Taps(K)
    devices = [torch.cuda.current_device()] if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices), torch.enable_grad(), rnn.tapped(taps):
        loss = loss_of()
    wanted: list[Tensor] = []
    for l in range(K):
        wanted += taps.preacts[l]
        for path in Taps.PATHS:
            wanted += taps.uses[l][path]
    grads = iter(torch.autograd.grad(loss, wanted, allow_unused=True) if wanted else [])
    slope = rnn.slope_value()
    out: dict[str, float] = {"slope": slope}
    for l in range(K):
        if not taps.preacts[l]:
            continue
        sz = torch.cat([x.detach() for x in taps.preacts[l]])
        z = torch.cat([x.detach() for x in taps.zs[l]])
        name = f"_l{l + 1}"
        out["z_rate" + name] = float(z.mean())
        out["sz_mean" + name] = float(sz.mean())
        out["sz_std" + name] = float(sz.std(correction=0))
        for source, parts in taps.terms[l].items():
            if parts:
                out[f"sz_{source}" + name] = float(torch.cat(parts).mean())
        out["sz_linear" + name] = float(((slope * sz).abs() < 1).float().mean())
        out["grad_sz" + name] = _mean_abs(taps.preacts[l], grads)
        for path in Taps.PATHS:
            if taps.uses[l][path]:
                out[f"grad_{path}" + name] = _mean_abs(taps.uses[l][path], grads)
    return out


def _mean_abs(tapped: list[Tensor], grads) -> float:
    """Mean |d loss / d x| over every element of the ``tapped`` tensors, their gradients the
    next ones of ``grads`` (a tensor the loss does not reach counts as zeros)."""
    total, count = 0.0, 0
    for x in tapped:
        g = next(grads)
        count += x.numel()
        if g is not None:
            total += float(g.abs().sum())
    return total / count if count else 0.0
