"""Mixed precision (torch.autocast, Lightning's ``precision="bf16-mixed"``) through the fast loop:
the multiplies in bf16, the state, the cell's arithmetic and the gradients in float32.

The Triton cell's bf16 path is tested in tests/core/test_triton.py (it runs in Triton's
interpreter on a CPU); here the torch-operation cell (the C++ cell reads one dtype, so mixed
precision on CPU runs torch operations) and the training loop end to end.
"""

from __future__ import annotations

import pytest
import torch

from hmrnn.core import HMLSTM, HMLSTMState, StackedLSTM


def run(module, x, state, autocast: bool, grad: bool = True):
    """Outputs (float) and the gradients of a loss touching them."""
    module.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_(grad)
    cast = torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast)
    with cast, torch.set_grad_enabled(grad):
        out, last, _ = module(x, state)
    assert out.dtype == last.c.dtype == torch.float32, "the state stays in float32"
    if not grad:
        return [out, last.c], []
    weights = torch.linspace(-1, 1, out.numel(), device=out.device).view_as(out)
    ((out * weights).sum() + last.c.pow(2).sum()).backward()
    grads = [x.grad, *(p.grad for p in module.parameters())]
    assert all(g.dtype == torch.float32 for g in grads), "gradients in the parameters' dtype"
    return [out.detach(), last.c.detach()], grads


def error(got, want) -> float:
    """The largest difference of any tensor, relative to that tensor's largest value."""
    return max(
        ((a - b).abs().max() / b.abs().max().clamp_min(1e-6)).item()
        for a, b in zip(got, want, strict=True)
    )


def assert_as_accurate_as_autocast(module, x, state) -> None:
    """bf16 through the fast loop is as close to float32 as bf16 through the autograd path
    (autocast's own casts; with layer norm both are about 10 % off at worst, which the
    normalisation amplifies), and without layer norm within 3 %."""
    want, want_grads = run(module, x, state, autocast=False)
    got, got_grads = run(module, x, state, autocast=True)
    assert not torch.equal(got[0], want[0]), "the multiplies did run in bf16"
    module.fused = False
    base, base_grads = run(module, x, state, autocast=True)
    module.fused = True
    truth = want + want_grads
    fast, slow = error(got + got_grads, truth), error(base + base_grads, truth)
    assert fast <= 1.5 * slow + 5e-3, (fast, slow)
    if not getattr(module, "layer_norm", False):
        assert fast <= 3e-2, fast
    nograd, _ = run(module, x, state, autocast=True, grad=False)  # the pass without autograd
    torch.testing.assert_close(nograd, got, rtol=0, atol=0)


def inputs(K: int, H: int = 16, T: int = 6, B: int = 4, device: str | torch.device = "cpu"):
    torch.manual_seed(1)
    x = torch.randn(T, B, 5)
    state = HMLSTMState(torch.randn(K, B, H) * 0.5, torch.randn(K, B, H), torch.ones(K, B))
    return x.to(device), HMLSTMState(*(s.to(device) for s in state))


@pytest.mark.parametrize("layer_norm", [False, True])
@pytest.mark.parametrize("native", [True, False], ids=["native", "torch_ops"])
def test_autocast_runs_the_multiplies_in_bf16_and_keeps_float32_state(layer_norm, native) -> None:
    torch.manual_seed(0)
    rnn = HMLSTM(5, 16, 3, layer_norm=layer_norm, boundary="soft")
    rnn.native = native
    assert_as_accurate_as_autocast(rnn, *inputs(3))


def test_the_ln_lstm_under_autocast() -> None:
    torch.manual_seed(0)
    assert_as_accurate_as_autocast(StackedLSTM(5, 16, 2, layer_norm=True), *inputs(2))
