"""The stacked-LSTM baseline: nn.LSTM's numbers, and the LN-LSTM's equations."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hmrnn.core import HMLSTMState, StackedLSTM


def test_stack_equals_a_multi_layer_nn_lstm() -> None:
    torch.manual_seed(0)
    stack = StackedLSTM(5, 7, 3).double()
    ref = nn.LSTM(5, 7, 3).double()
    with torch.no_grad():
        for l, layer in enumerate(stack.layers):
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(ref, f"{name}_l{l}").copy_(getattr(layer, f"{name}_l0"))
    x = torch.randn(9, 4, 5).double()
    out, state, bounds = stack(x)
    want, (h, c) = ref(x)
    torch.testing.assert_close(out[:, :, -1], want)
    torch.testing.assert_close(state.h, h)
    torch.testing.assert_close(state.c, c)
    assert bounds.shape == (9, 4, 3) and not bounds.any()


@pytest.mark.parametrize("layer_norm", [False, True])
def test_two_chunks_equal_one_run(layer_norm: bool) -> None:
    torch.manual_seed(0)
    stack = StackedLSTM(5, 7, 2, layer_norm=layer_norm).double()
    x = torch.randn(9, 4, 5).double()
    out, last, _ = stack(x)
    a, mid, _ = stack(x[:4])
    b, last2, _ = stack(x[4:], mid)
    torch.testing.assert_close(torch.cat([a, b]), out)
    torch.testing.assert_close(last2.c, last.c)


def test_ln_lstm_step_follows_the_equations() -> None:
    torch.manual_seed(0)
    stack = StackedLSTM(5, 7, 1, layer_norm=True).double()
    with torch.no_grad():
        stack.ln_ih.uniform_(0.5, 1.5)
        stack.ln_c_bias.uniform_(-0.5, 0.5)
    x = torch.randn(1, 4, 5).double()
    out, state, _ = stack(x)
    lstm, H = stack.layers[0], 7

    def ln(v: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
        return nn.functional.layer_norm(v, (v.size(-1),), w, b, 1e-5)

    s = ln(x[0] @ lstm.weight_ih_l0.t(), stack.ln_ih[0]) + lstm.bias_ih_l0 + lstm.bias_hh_l0
    i, g, o = s[:, :H].sigmoid(), s[:, 2 * H : 3 * H].tanh(), s[:, 3 * H :].sigmoid()
    c = i * g  # c_0 = 0 and h_0 = 0: the recurrent term is absent
    torch.testing.assert_close(state.c[0], c)
    torch.testing.assert_close(
        out[0, :, 0], o * torch.tanh(ln(c, stack.ln_c_weight[0], stack.ln_c_bias[0]))
    )


def test_boundaries_cannot_be_imposed_on_an_lstm() -> None:
    with pytest.raises(ValueError, match="cannot be imposed"):
        StackedLSTM(5, 7, 2)(torch.randn(3, 2, 5), boundaries=torch.zeros(3, 2, 2))


def test_ln_lstm_loop_equals_the_autograd_loop() -> None:
    """The LN-LSTM through the hand-written loop: outputs and every gradient as the loop of
    autograd operations, in float64, from a random state and from zeros."""
    torch.manual_seed(0)
    stack = StackedLSTM(5, 7, 3, layer_norm=True).double()
    with torch.no_grad():
        for p in (stack.ln_ih, stack.ln_hh, stack.ln_c_weight):
            p.uniform_(0.5, 1.5)
        stack.ln_c_bias.uniform_(-0.5, 0.5)
    x = torch.randn(9, 4, 5).double().requires_grad_()
    states = [
        None,
        HMLSTMState(
            torch.randn(3, 4, 7).double(), torch.randn(3, 4, 7).double(), torch.zeros(3, 4).double()
        ),
    ]
    for state in states:
        results = []
        for fused in (True, False):
            stack.fused = fused
            stack.zero_grad()
            x.grad = None
            out, last, _ = stack(x, state)
            weights = torch.linspace(-1, 1, out.numel()).double().view_as(out)
            ((out * weights).sum() + last.c.pow(2).sum() + last.h.sum()).backward()
            grads = [p.grad.clone() for p in stack.parameters()] + [x.grad.clone()]
            results.append((out.detach(), last.h, last.c, grads))
        (out, h, c, grads), (out2, h2, c2, grads2) = results
        for a, b in [(out, out2), (h, h2), (c, c2), *zip(grads, grads2, strict=True)]:
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)
    stack.eval()
    with torch.no_grad():
        stack.fused = True
        fast = stack(x)[0]
        stack.fused = False
        torch.testing.assert_close(fast, stack(x)[0], rtol=1e-9, atol=1e-10)
