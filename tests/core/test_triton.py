"""The Triton cell (hmrnn.core.fused.triton_cell), the GPU's fused kernels, against the reference.

Without a GPU the kernels run in Triton's interpreter (numpy, a program at a time; the module
sets TRITON_INTERPRET=1 where torch sees no CUDA device), so these tests check every kernel on
the CPU: every boundary variant, with and without layer norm, grad_through_ops both ways, imposed
boundaries or not, float64 against the reference and float32 against float64. With a GPU they
run on it. They also count the kernel launches per layer and step, and check that the loop's GPU
path never waits for the device (no host synchronisation: what CUDA graphs need).
"""

from __future__ import annotations

import os
from dataclasses import replace

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

if not torch.cuda.is_available():  # before Triton's first import, or its library is compiled
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton", reason="Triton is not installed (pip install -e '.[test]')")

from hmrnn.core import HMLSTM, HMLSTMState, StackedLSTM, reference_forward
from hmrnn.core.fused import LoopSpec, native
from tests.core.test_mixed import assert_as_accurate_as_autocast
from tests.core.test_mixed import inputs as mixed_inputs
from tests.core.test_reference import VARIANTS  # boundary, layer_norm, top_boundary, gto

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
H_IN, H, B, T = 5, 6, 3, 5


def make(num_layers: int, dtype=torch.float64, **kwargs) -> HMLSTM:
    torch.manual_seed(0)
    rnn = HMLSTM(H_IN, H, num_layers, **kwargs).to(DEVICE, dtype)
    with torch.no_grad():
        rnn.slope.fill_(1.7)
        for l in range(num_layers):
            rnn.param("bias", l).uniform_(-0.5, 0.5)
    return rnn


def inputs(num_layers: int, dtype=torch.float64, steps: int = T):
    torch.manual_seed(3)
    x = torch.randn(steps, B, H_IN, dtype=dtype, device=DEVICE)
    state = HMLSTMState(
        torch.randn(num_layers, B, H, dtype=dtype, device=DEVICE),
        torch.randn(num_layers, B, H, dtype=dtype, device=DEVICE),
        torch.randint(0, 2, (num_layers, B), device=DEVICE).to(dtype),
    )
    imposed = torch.randint(0, 2, (steps, B, num_layers), device=DEVICE).to(dtype)
    return x, state, imposed


def outputs_and_grads(fn, rnn, x, state, boundaries, seed: int = 1):
    """fn's outputs and the gradients of a loss touching every output (same draws each time)."""
    rnn.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_()
    h0, c0 = state.h.detach().requires_grad_(), state.c.detach().requires_grad_()
    torch.manual_seed(seed)
    out, last, bounds = fn(rnn, x, HMLSTMState(h0, c0, state.z), boundaries)
    weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype, device=out.device)
    loss = (out * weights.view_as(out)).sum()
    loss = loss + last.c.pow(2).sum() + last.h.sum() + (bounds * 0.3).sum()
    loss.backward()
    grads = [p.grad for p in rnn.parameters()] + [x.grad, h0.grad, c0.grad]
    return [out.detach(), *(s.detach() for s in last), bounds.detach()], grads


def fast(rnn, x, state, boundaries):
    return rnn(x, state, boundaries) if boundaries is not None else rnn(x, state)


def test_the_triton_cell_is_chosen() -> None:
    spec = LoopSpec.of(make(2), True, DEVICE, torch.float64)
    assert not spec.triton or DEVICE.type == "cuda"  # True picks Triton on CUDA only
    rnn = make(2)
    rnn.native = "triton"
    spec = LoopSpec.of(rnn, True, DEVICE, torch.float64)
    assert spec.native and spec.triton and spec.sample_mode == 1 and spec.grad_mode == 1
    assert not spec.skip_copy, "the GPU path never gathers rows (that would synchronise)"


def test_a_wrong_native_setting_is_one_clear_error() -> None:
    rnn = make(1)
    rnn.native = "cuda"
    with pytest.raises(ValueError, match="native must be one of"):
        rnn(torch.zeros(2, 1, H_IN, dtype=torch.float64, device=DEVICE))


@pytest.mark.parametrize(
    ("boundary", "layer_norm", "top_layer_boundary", "grad_through_ops"), VARIANTS
)
def test_every_variant_equals_the_reference(
    boundary, layer_norm, top_layer_boundary, grad_through_ops
) -> None:
    """Three layers (a first, a middle and a top layer), learned and imposed boundaries, float64:
    every kernel, forward and backward."""
    rnn = make(
        3,
        layer_norm=layer_norm,
        boundary=boundary,
        top_layer_boundary=top_layer_boundary,
        grad_through_ops=grad_through_ops,
    )
    rnn.native = "triton"
    x, state, imposed = inputs(3)
    for boundaries in (None, imposed):
        got, got_grads = outputs_and_grads(fast, rnn, x, state, boundaries)
        want, want_grads = outputs_and_grads(reference_forward, rnn, x, state, boundaries)
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)
        for a, b in zip(got_grads, want_grads, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("layer_norm", [False, True])
def test_detector_input_grad_off_equals_the_reference(layer_norm) -> None:
    """The z rows' input gradients cut (their column of the backward weights zeroed, the gates'
    share added back): as the reference."""
    rnn = make(3, layer_norm=layer_norm, detector_input_grad=False)
    rnn.native = "triton"
    x, state, _ = inputs(3)
    got, got_grads = outputs_and_grads(fast, rnn, x, state, None)
    want, want_grads = outputs_and_grads(reference_forward, rnn, x, state, None)
    for a, b in zip(got + got_grads, want + want_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("layer_norm", [False, True])
def test_one_layer_equals_the_reference(layer_norm) -> None:
    """A single layer: the first layer is also the top one (no top-down input)."""
    rnn = make(1, layer_norm=layer_norm, top_layer_boundary=True, grad_through_ops=True)
    rnn.native = "triton"
    x, state, _ = inputs(1)
    got, got_grads = outputs_and_grads(fast, rnn, x, state, None)
    want, want_grads = outputs_and_grads(reference_forward, rnn, x, state, None)
    for a, b in zip(got + got_grads, want + want_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("layer_norm", [False, True])
def test_float32_is_as_accurate_as_torch_operations(layer_norm) -> None:
    """float32 through the Triton cell is as close to float64 as float32 through torch
    operations (its exp-based tanh and its sums in another order round differently, not
    worse)."""
    rnn = make(3, layer_norm=layer_norm, grad_through_ops=True)
    x, state, _ = inputs(3, steps=8)
    rnn.native = False
    truth, truth_grads = outputs_and_grads(fast, rnn, x, state, None)
    rnn.float()
    x32 = x.float()
    state32 = HMLSTMState(*(s.float() for s in state))
    errors = {}
    for setting in ("triton", False):
        rnn.native = setting
        got, grads = outputs_and_grads(fast, rnn, x32, state32, None)
        errors[setting] = max(
            (a.double() - b).abs().max().item()
            for a, b in zip(got + grads, truth + truth_grads, strict=True)
        )
    assert errors["triton"] <= 4 * errors[False] + 1e-6, errors


def test_the_ln_lstm_equals_its_autograd_loop() -> None:
    """The LN-LSTM baseline (every layer updating, nothing gated) through the Triton cell."""
    torch.manual_seed(0)
    stack = StackedLSTM(H_IN, H, 2, layer_norm=True).to(DEVICE, torch.float64)
    x, state, _ = inputs(2)
    results = []
    for setting in ("triton", None):
        stack.native = setting if setting is not None else False
        stack.fused = setting is not None
        stack.zero_grad(set_to_none=True)
        xg = x.detach().requires_grad_()
        out, last, _ = stack(xg, state)
        (out.sum() + last.c.pow(2).sum()).backward()
        grads = [p.grad for p in stack.parameters()]
        results.append([out.detach(), last.c.detach(), xg.grad, *grads])
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("layer_norm", [False, True])
def test_bf16_autocast_through_the_triton_cell(layer_norm) -> None:
    """Mixed precision: the cell reads bf16 multiplies and keeps float32 state, as accurate as
    autocast on the autograd path (tests/core/test_mixed.py)."""
    torch.manual_seed(0)
    rnn = HMLSTM(5, 16, 3, layer_norm=layer_norm, boundary="soft").to(DEVICE)
    rnn.native = "triton"
    assert_as_accurate_as_autocast(rnn, *mixed_inputs(3, device=DEVICE))


# -------------------------------------------------------------------- launches and synchronisation
SYNCS = {"aten::_local_scalar_dense", "aten::nonzero", "aten::is_nonzero", "aten::item"}
FREE = {"aten::empty", "aten::empty_like", "aten::new_empty", "aten::empty_strided"}


class Launches(TorchDispatchMode):
    """Counts the torch operations that launch work (not views, not allocations) and records
    those that make the host wait for the device."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self.syncs: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name
        returns = func._schema.returns
        view = any(r.alias_info is not None and not r.alias_info.is_write for r in returns)
        if name in SYNCS:
            self.syncs.append(name)
        if not view and name not in FREE:
            self.count += 1
        return func(*args, **(kwargs or {}))


def per_step(rnn, layers: int, train: bool) -> tuple[float, list[str]]:
    """Launches (Triton kernels plus torch operations) per layer and step, forward (and backward
    with ``train``), from the difference between two sequence lengths; and the host syncs."""
    kernels = native.triton_kernels()
    assert kernels is not None
    rnn.slope_value()  # read once from the buffer after it changed (set_slope: never)
    counts, syncs = [], []
    for steps in (4, 4, 8):  # the first call fills the weight cache: not counted
        x, state, _ = inputs(layers, steps=steps)
        x.requires_grad_(train)
        rnn.zero_grad(set_to_none=True)  # accumulating into .grad is per call, not per step
        with torch.set_grad_enabled(train), Launches() as mode:
            before = kernels.launches
            out = rnn(x, state)[0]
            if train:
                out.backward(torch.ones_like(out))
        counts.append(mode.count + kernels.launches - before)
        syncs += mode.syncs
    return (counts[2] - counts[1]) / (4 * layers), syncs


@pytest.mark.parametrize("layer_norm", [False, True])
def test_launches_per_layer_and_step_and_no_host_sync(layer_norm) -> None:
    """What runs per layer and step on the GPU path outside a CUDA graph (issue 17: at most 4),
    forward and backward, and that nothing in a training step waits for the device.

    Without layer norm: forward gather, multiply, cell; backward cell, multiply, scatter. With
    it: forward one multiply per projection (2-3) and the cell with its normalisations; backward
    the cell with the recomputation and the projections' normalisation, the sums over rows, one
    batched multiply, the scatter."""
    rnn = make(3, layer_norm=layer_norm)
    rnn.native = "triton"
    forward, syncs = per_step(rnn, 3, train=False)
    training, train_syncs = per_step(rnn, 3, train=True)
    backward = training - forward
    print(f"layer_norm={layer_norm}: {forward:.2f} launches per layer-step forward, {backward:.2f}")
    assert not syncs and not train_syncs, syncs + train_syncs
    if layer_norm:  # (2 + 3 + 2) / 3 multiplies and the cell; 4 backward
        assert forward == pytest.approx(10 / 3) and backward == pytest.approx(4)
    else:
        assert forward == 3 and backward == 3


def test_the_layer_norm_kernels_alone_equal_the_torch_operations() -> None:
    """The normalisation kernels as separate launches (the loop fuses them into the cell's, and
    calls them alone for an estimator whose gradient runs in Python): the preactivation, the
    recomputation and the projections' backward, with an all-zero row (absent: rstd 0)."""
    from hmrnn.core.fused import cell, ln_cell

    kernels = native.triton_kernels()
    torch.manual_seed(0)
    M, Hh, dt = 5, 6, torch.float64
    G = 4 * Hh + 1
    opts = {"dtype": dt, "device": DEVICE}
    P = [torch.randn(M, G, **opts) for _ in range(3)]
    P[1][2] = 0.0  # a closed gate's projection
    gains = torch.randn(3, G, **opts)
    gates = [None, torch.randint(0, 2, (M, 1), **opts), torch.rand(M, 1, **opts)]
    add = torch.randn(G, **opts)
    want_s, got_s = torch.empty(M, G, **opts), torch.empty(M, G, **opts)
    want_x, got_x = [torch.empty(M, G, **opts) for _ in P], [torch.empty(M, G, **opts) for _ in P]
    want_st, got_st = torch.zeros(M, 5, **opts), torch.zeros(M, 5, **opts)
    ln_cell.preact_forward(P, list(gains.unbind(0)), gates, add, want_s, want_x, want_st)
    kernels.preact_forward(P, gains, gates, add.expand(M, G), got_s, got_x, got_st)
    for a, b in zip([got_s, got_st, *got_x], [want_s, want_st, *want_x], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)

    c = torch.randn(M, Hh, **opts)
    stats_c = torch.stack([c.mean(1), 1 / c.std(1, correction=0)], 1)
    gain_c, bias_c = torch.randn(Hh, **opts), torch.randn(Hh, **opts)
    acts, tc = torch.empty(M, G, **opts), torch.empty(M, Hh, **opts)
    kernels.recompute(want_x, gains, gates, add.expand(M, G), acts, c, stats_c, gain_c, bias_c, tc)
    want_acts = torch.empty(M, G, **opts)
    spec = LoopSpec.of(make(2).to(DEVICE), True, DEVICE, dt)
    cell.activate(replace(spec, H=Hh), want_s, want_acts)
    want_tc = torch.tanh(bias_c + (c - stats_c[:, :1]) * stats_c[:, 1:] * gain_c)
    torch.testing.assert_close(acts, want_acts, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(tc, want_tc, rtol=1e-12, atol=1e-12)

    ds = torch.randn(M, G, **opts)
    want_gg = torch.randn(3, G, **opts)  # the gains' gradients so far (added to)
    got_gg = want_gg.clone()
    want_gp, got_gp = [torch.empty(M, G, **opts) for _ in P], [torch.empty(M, G, **opts) for _ in P]
    want_gb = torch.randn(G, **opts)
    got_gb = want_gb.clone()
    want_gates = ln_cell.preact_backward(
        ds, want_x, want_st, list(gains.unbind(0)), gates, list(want_gg.unbind(0)), want_gp
    )
    want_gb += ds.sum(0)
    got_gates = kernels.preact_backward(ds, want_x, want_st, gains, gates, got_gg, got_gp, got_gb)
    for a, b in zip([got_gg, got_gb, *got_gp], [want_gg, want_gb, *want_gp], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert got_gates[0] is None and want_gates[0] is None
    for a, b in zip(got_gates[1:], want_gates[1:], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
