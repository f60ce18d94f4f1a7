"""hmrnn.core.diagnostics: the detectors' numbers, and the split of d loss / d z by path."""

from __future__ import annotations

import pytest
import torch

from hmrnn.core import HMLSTM
from hmrnn.core.autograd_step import Taps
from hmrnn.core.diagnostics import boundary_diagnostics


def model(**kwargs) -> HMLSTM:
    torch.manual_seed(0)
    rnn = HMLSTM(4, 8, 3, **kwargs).double()
    with torch.no_grad():
        for l in range(3):
            rnn.param("bias", l).uniform_(-0.5, 0.5)
    return rnn


@pytest.mark.parametrize("boundary", ["step", "soft"])
@pytest.mark.parametrize("layer_norm", [False, True])
def test_the_paths_add_up_to_the_whole_gradient_of_z(boundary, layer_norm) -> None:
    """The aliases' gradients (masks, top-down gate, bottom-up gate) of layer l's z sum to
    d loss / d z (summed over the steps) when the loss reads only the output h: the split
    loses nothing."""
    rnn = model(boundary=boundary, layer_norm=layer_norm)
    x = torch.randn(6, 3, 4, dtype=torch.float64)
    taps = Taps(3)
    with rnn.tapped(taps):
        out = rnn(x)[0]
    loss = (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum()
    for l in range(2):  # the detector layers: per layer, summed over the steps
        zs = [z for z in taps.zs[l] if z.requires_grad]
        uses = [u for path in Taps.PATHS for u in taps.uses[l][path]]
        grads = torch.autograd.grad(loss, zs + uses, retain_graph=True, allow_unused=True)
        whole = sum(g for g in grads[: len(zs)] if g is not None)
        parts = sum(g for g in grads[len(zs) :] if g is not None)
        assert len(zs) == 6 and isinstance(parts, torch.Tensor) and parts.abs().sum() > 0
        torch.testing.assert_close(parts, whole)


def test_the_numbers_per_layer() -> None:
    rnn = model()
    rnn.set_slope(2.0)
    x = torch.randn(7, 5, 4, dtype=torch.float64)
    found = boundary_diagnostics(rnn, lambda: rnn(x)[0].pow(2).mean())
    assert found["slope"] == 2.0
    # layers 1 and 2 detect (the top layer has no boundary by default); the top-down gate
    # exists where there is a layer above, the bottom-up gate below the top
    assert {k for k in found if k.endswith("_l3")} == set()
    for l in (1, 2):
        for key in ("z_rate", "sz_mean", "sz_std", "sz_linear", "grad_sz", "grad_masks"):
            assert f"{key}_l{l}" in found
        assert 0 <= found[f"z_rate_l{l}"] <= 1 and 0 <= found[f"sz_linear_l{l}"] <= 1
        assert found[f"grad_sz_l{l}"] > 0 and found[f"grad_top_down_l{l}"] > 0
    # the same numbers by hand from the autograd pass
    taps = Taps(3)
    with rnn.tapped(taps):
        rnn(x)
    sz = torch.cat([t.detach() for t in taps.preacts[0]])
    assert found["sz_mean_l1"] == pytest.approx(float(sz.mean()))
    assert found["sz_linear_l1"] == pytest.approx(float(((2.0 * sz).abs() < 1).double().mean()))
    assert found["z_rate_l1"] == pytest.approx(float((sz > 0).double().mean()))


@pytest.mark.parametrize("layer_norm", [False, True])
def test_the_parts_of_s_z_add_up_with_the_bias(layer_norm) -> None:
    """sz_recurrent + sz_top_down + sz_bottom_up + the z row's bias = sz_mean, per layer and
    per step; and the logged means are those of the parts."""
    rnn = model(layer_norm=layer_norm)
    x = torch.randn(7, 5, 4, dtype=torch.float64)
    taps = Taps(3)
    with rnn.tapped(taps):
        rnn(x)
    for l in range(2):
        sources = taps.terms[l]
        assert set(sources) == {"recurrent", "top_down", "bottom_up"}
        for t, s_z in enumerate(taps.preacts[l]):
            total = sum(sources[name][t] for name in sources) + rnn.param("bias", l)[4 * 8]
            torch.testing.assert_close(total, s_z.detach())
    found = boundary_diagnostics(rnn, lambda: rnn(x)[0].pow(2).mean())
    for l in (1, 2):
        parts = sum(found[f"sz_{name}_l{l}"] for name in Taps.SOURCES)
        bias = float(rnn.param("bias", l - 1)[4 * 8])
        assert parts + bias == pytest.approx(found[f"sz_mean_l{l}"])


def test_diagnostics_leave_training_untouched() -> None:
    """No parameter gets a gradient, the random state is as before (a Bernoulli detector draws
    inside), and the module runs its fast loop again afterwards."""
    rnn = model(boundary="bernoulli")
    x = torch.randn(5, 2, 4, dtype=torch.float64)
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    boundary_diagnostics(rnn, lambda: rnn(x)[0].sum())
    torch.testing.assert_close(torch.rand(3), expected)
    assert all(p.grad is None for p in rnn.parameters())
    assert "_taps" not in rnn.__dict__
