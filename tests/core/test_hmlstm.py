"""The HM-LSTM against the equations of model.md, nn.LSTMCell and the reference implementation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hmrnn.core import HMLSTM, HMLSTMState
from hmrnn.core.hmlstm import LN_EPS, layer_norm

H_IN, H, B, T = 5, 6, 4, 9


def make(num_layers: int = 3, **options: object) -> HMLSTM:
    torch.manual_seed(0)
    rnn = HMLSTM(H_IN, H, num_layers, **options).double()
    with torch.no_grad():  # non-trivial biases so that no gate sits at a symmetric point
        for l in range(rnn.num_layers):
            rnn.param("bias", l).uniform_(-0.5, 0.5)
    return rnn


def random_state(rnn: HMLSTM, batch: int = B) -> HMLSTMState:
    K = rnn.num_layers
    z = torch.randint(0, 2, (K, batch)).double()
    if not rnn.top_layer_boundary:
        z[-1] = 0
    return HMLSTMState(torch.randn(K, batch, H).double(), torch.randn(K, batch, H).double(), z)


def spec_gates(
    rnn: HMLSTM,
    l: int,
    h_prev: Tensor,
    z_prev: Tensor,
    above: Tensor | None,
    below: Tensor,
    z_below: Tensor,
) -> tuple[Tensor, ...]:
    """model.md §1's s_t^l written out term by term, sliced into i, f, g, o and s[z]."""
    s = h_prev @ rnn.param("weight_hh", l).t() + rnn.param("bias", l)
    s = s + z_below[:, None] * (below @ rnn.param("weight_ih", l).t())
    if above is not None:
        s = s + z_prev[:, None] * (above @ rnn.param("weight_td", l).t())
    i, f = s[:, :H].sigmoid(), s[:, H : 2 * H].sigmoid()
    g, o = s[:, 2 * H : 3 * H].tanh(), s[:, 3 * H : 4 * H].sigmoid()
    return i, f, g, o, s[:, 4 * H :]


# ----------------------------------------------------------------------- the operation table
@torch.no_grad()
def test_copy_update_flush_rows_of_a_middle_layer() -> None:
    rnn = make()
    state = random_state(rnn)
    # rows: (z_{t-1}^2, z_t^1) = (0, 0) COPY, (0, 1) UPDATE, (1, 0) FLUSH, (1, 1) FLUSH
    state.z[1] = torch.tensor([0.0, 0.0, 1.0, 1.0])
    imposed = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 0, 0], [1, 0, 0]]).double()
    out, new, _ = rnn.step(torch.randn(B, H_IN).double(), state, imposed)

    i, f, g, o, _ = spec_gates(rnn, 1, state.h[1], state.z[1], state.h[2], out[:, 0], imposed[:, 0])
    c_update, c_flush = f * state.c[1] + i * g, i * g
    assert torch.equal(new.c[1, 0], state.c[1, 0]), "COPY must leave c bit-identical"
    assert torch.equal(new.h[1, 0], state.h[1, 0]), "COPY must leave h bit-identical"
    torch.testing.assert_close(new.c[1, 1], c_update[1])
    torch.testing.assert_close(new.h[1, 1], o[1] * torch.tanh(c_update[1]))
    for row in (2, 3):
        torch.testing.assert_close(new.c[1, row], c_flush[row])
        torch.testing.assert_close(new.h[1, row], o[row] * torch.tanh(c_flush[row]))
    assert torch.equal(out[:, 1], new.h[1])


@torch.no_grad()
def test_first_layer_updates_or_flushes_but_never_copies() -> None:
    rnn = make()
    state = random_state(rnn)
    state.z[0] = torch.tensor([0.0, 0.0, 1.0, 1.0])  # UPDATE, UPDATE, FLUSH, FLUSH
    x = torch.randn(B, H_IN).double()
    _, new, _ = rnn.step(x, state, torch.zeros(B, 3).double())
    i, f, g, o, _ = spec_gates(
        rnn, 0, state.h[0], state.z[0], state.h[1], x, torch.ones(B).double()
    )
    c = torch.where(state.z[0, :, None] == 1, i * g, f * state.c[0] + i * g)
    torch.testing.assert_close(new.c[0], c)
    torch.testing.assert_close(new.h[0], o * torch.tanh(c))
    assert (new.h[0] - state.h[0]).abs().amin(dim=1).gt(0).all()


@pytest.mark.parametrize("top_layer_boundary", [False, True])
@torch.no_grad()
def test_top_layer_flushes_only_with_top_layer_boundary(top_layer_boundary: bool) -> None:
    rnn = make(top_layer_boundary=top_layer_boundary)
    assert rnn.gate_rows(2) == 4 * H + int(top_layer_boundary)
    state = random_state(rnn)
    state.z[2] = 1.0  # only read when the top layer has a detector
    imposed = torch.ones(B, 3).double()  # z_t^2 = 1: the top layer does not COPY
    out, new, bounds = rnn.step(torch.randn(B, H_IN).double(), state, imposed)
    i, f, g, o, _ = spec_gates(rnn, 2, state.h[2], state.z[2], None, out[:, 1], imposed[:, 1])
    c = i * g if top_layer_boundary else f * state.c[2] + i * g
    torch.testing.assert_close(new.c[2], c)
    torch.testing.assert_close(new.h[2], o * torch.tanh(c))
    assert torch.equal(
        bounds[:, 2], torch.ones(B).double() if top_layer_boundary else torch.zeros(B).double()
    )


@torch.no_grad()
def test_top_layer_copies_when_the_layer_below_does_not_fire() -> None:
    rnn = make()
    state = random_state(rnn)
    _, new, _ = rnn.step(torch.randn(B, H_IN).double(), state, torch.zeros(B, 3).double())
    assert torch.equal(new.h[2], state.h[2]) and torch.equal(new.c[2], state.c[2])


@torch.no_grad()
def test_boundary_is_computed_on_copy_steps_from_the_recurrent_term_alone() -> None:
    rnn = make()
    state = random_state(rnn)
    state.z[1] = 0.0
    rnn.bias_l0[4 * H] = -100.0  # layer 1 never fires, so layer 2 COPYs
    recurrent = state.h[1] @ rnn.weight_hh_l1[4 * H]
    rnn.bias_l1[4 * H] = -recurrent.median()  # some rows fire and some do not
    x = torch.randn(1, B, H_IN).double()
    _, new, bounds = rnn(x, state)
    assert torch.equal(bounds[0, :, 0], torch.zeros(B).double())
    assert torch.equal(new.h[1], state.h[1]), "layer 2 must COPY"
    s_z = state.h[1] @ rnn.weight_hh_l1[4 * H] + rnn.bias_l1[4 * H]  # U h_{t-1} + b only
    assert torch.equal(bounds[0, :, 1], (s_z > 0).double())
    assert 0 < bounds[0, :, 1].sum() < B


# --------------------------------------------------------------------- layer 1 is an LSTM
@pytest.mark.parametrize("num_layers", [1, 3])
def test_first_layer_with_boundaries_all_zero_is_an_lstm_cell(num_layers: int) -> None:
    rnn = make(num_layers)
    cell = nn.LSTMCell(H_IN, H).double()
    with torch.no_grad():
        cell.weight_ih.copy_(rnn.weight_ih_l0[: 4 * H])
        cell.weight_hh.copy_(rnn.weight_hh_l0[: 4 * H])
        cell.bias_ih.copy_(rnn.bias_l0[: 4 * H])
        cell.bias_hh.zero_()
    x = torch.randn(T, B, H_IN).double()
    out, _, _ = rnn(x, boundaries=torch.zeros(T, B, num_layers).double())
    h = c = torch.zeros(B, H).double()
    for t in range(T):
        h, c = cell(x[t], (h, c))
        torch.testing.assert_close(out[t, :, 0], h, rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------- gradients
def test_grad_through_ops_changes_gradients_not_outputs() -> None:
    x = torch.randn(T, B, H_IN).double()
    results = []
    for flag in (True, False):
        rnn = make(grad_through_ops=flag)
        out, _, bounds = rnn(x)
        out.sum().backward()
        results.append((out.detach(), bounds, [p.grad for p in rnn.parameters()]))
    (o1, b1, g1), (o2, b2, g2) = results
    assert torch.equal(o1, o2) and torch.equal(b1, b2)
    assert 0 < b1[:, :, :2].mean() < 1, "both operations must occur for the test to mean much"
    assert any(not torch.allclose(a, b) for a, b in zip(g1, g2, strict=True))


@pytest.mark.parametrize("layer_norm", [False, True])
def test_soft_boundaries_pass_gradcheck(layer_norm: bool) -> None:
    rnn = make(boundary="soft", layer_norm=layer_norm)
    x = torch.randn(4, 2, H_IN).double().requires_grad_()
    state = random_state(rnn, 2)
    h0 = state.h.clone().requires_grad_()
    weights = (rnn.weight_hh_l1, rnn.weight_td_l0, rnn.weight_ih_l2)

    def run(x: Tensor, h0: Tensor, *_: Tensor) -> Tensor:
        out, new, bounds = rnn(x, HMLSTMState(h0, state.c, state.z))
        return torch.cat([out.flatten(), new.c.flatten(), bounds.flatten()])

    assert torch.autograd.gradcheck(run, (x, h0, *weights))


# ------------------------------------------------------------------------ carried state
@pytest.mark.parametrize("boundary", ["step", "soft", "bernoulli"])
@pytest.mark.parametrize("layer_norm", [False, True])
def test_two_chunks_with_carried_state_equal_one_run(boundary: str, layer_norm: bool) -> None:
    rnn = make(boundary=boundary, layer_norm=layer_norm)
    x = torch.randn(T, B, H_IN).double()
    state = random_state(rnn)

    torch.manual_seed(1)
    out, last, bounds = rnn(x, state)
    (out.sin().sum() + last.c.sum()).backward()
    grads = [p.grad.clone() for p in rnn.parameters()]
    rnn.zero_grad()

    torch.manual_seed(1)
    out1, mid, b1 = rnn(x[:4], state)
    out2, last2, b2 = rnn(x[4:], mid)
    (torch.cat([out1, out2]).sin().sum() + last2.c.sum()).backward()
    torch.testing.assert_close(torch.cat([out1, out2]), out, rtol=0, atol=1e-12)
    torch.testing.assert_close(torch.cat([b1, b2]), bounds, rtol=0, atol=0)
    for a, b in zip(last2, last, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    for a, b in zip((p.grad for p in rnn.parameters()), grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_step_equals_forward() -> None:
    rnn = make()
    x = torch.randn(T, B, H_IN).double()
    out, last, bounds = rnn(x)
    state = None
    for t in range(T):
        o, state, b = rnn.step(x[t], state)
        torch.testing.assert_close(o, out[t], rtol=0, atol=1e-12)
        assert torch.equal(b, bounds[t])
    torch.testing.assert_close(state.h, last.h, rtol=0, atol=1e-12)


def test_batch_first_is_a_transpose() -> None:
    rnn = make()
    x = torch.randn(T, B, H_IN).double()
    out, _, bounds = rnn(x)
    rnn.batch_first = True
    out_bf, _, bounds_bf = rnn(x.transpose(0, 1))
    torch.testing.assert_close(out_bf, out.transpose(0, 1), rtol=0, atol=0)
    assert torch.equal(bounds_bf, bounds.transpose(0, 1))


# --------------------------------------------------------------------------- layer norm
def test_layer_norm_is_finite_when_the_top_down_input_is_all_zeros() -> None:
    rnn = HMLSTM(H_IN, H, 3, layer_norm=True)  # float32, as trained
    x = torch.randn(50, B, H_IN, requires_grad=True)
    # layer 2 never fires, so layer 3 never leaves its all-zero initial state: the top-down input
    # of layer 2 is all zeros at every step; layer 1 fires everywhere so layer 2 reads it
    imposed = torch.zeros(50, B, 3)
    imposed[:, :, 0] = 1.0
    for boundaries in (imposed, None):
        rnn.zero_grad()
        x.grad = None
        out, last, _ = rnn(x, boundaries=boundaries)
        (out.sum() + last.c.sum()).backward()
        assert torch.isfinite(out).all()
        grads = [p.grad for p in rnn.parameters()] + [x.grad]
        assert all(torch.isfinite(g).all() for g in grads)
        if boundaries is not None:
            assert torch.equal(last.h[2], torch.zeros(B, H)), "the top layer must stay all-zero"
            assert rnn.weight_td_l1.grad.abs().sum() == 0  # its input is zero at every step


def test_layer_norm_maps_an_all_zero_row_to_zero_with_zero_gradient() -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 8).double()
    x[1] = 0.0
    weight, bias = torch.rand(8).double() + 0.5, torch.randn(8).double()
    for b in (None, bias):
        ours = x.clone().requires_grad_()
        plain = x.clone().requires_grad_()
        out = layer_norm(ours, weight, b)
        want = F.layer_norm(plain, (8,), weight, b, LN_EPS)
        torch.testing.assert_close(out, want, rtol=0, atol=0)
        upstream = torch.randn(3, 8).double()
        out.backward(upstream)
        want.backward(upstream)
        assert torch.equal(ours.grad[1], torch.zeros(8).double())
        assert plain.grad[1].abs().max() > 100  # plain layer norm: weight / sqrt(eps)
        torch.testing.assert_close(ours.grad[[0, 2]], plain.grad[[0, 2]])


def test_slope_is_a_persistent_buffer() -> None:
    rnn = make()
    rnn.slope.fill_(3.0)
    assert rnn.state_dict()["slope"].item() == 3.0
    other = make()
    other.load_state_dict(rnn.state_dict())
    assert other.slope.item() == 3.0


def test_z_bias_init_sets_the_z_rows_bias_and_how_often_detectors_fire() -> None:
    torch.manual_seed(0)
    rnn = HMLSTM(H_IN, H, 3, z_bias_init=[-4.0, 4.0])
    assert rnn.bias_l0[4 * H].item() == -4.0 and rnn.bias_l1[4 * H].item() == 4.0
    assert rnn.gate_rows(2) == 4 * H  # the top layer has no z row
    assert torch.equal(rnn.bias_l0[: 4 * H], make_default_bias())
    _, _, z = rnn(torch.randn(20, 3, H_IN) * 0.1)
    assert z[..., 0].mean() < 0.2 and z[..., 1].mean() > 0.8
    assert "z_bias_init=[-4.0, 4.0]" in repr(rnn)
    assert HMLSTM(H_IN, H, 3, z_bias_init=2.0).z_bias_init == (2.0, 2.0)
    assert [name for name, _, _ in HMLSTM(H_IN, H, 2, layer_norm=True).z_rows()] == [
        "weight_ih_l0",
        "weight_hh_l0",
        "weight_td_l0",
        "bias_l0",
        "ln_ih_l0",
        "ln_hh_l0",
        "ln_td_l0",
    ]


def make_default_bias() -> Tensor:
    bias = torch.zeros(4 * H)
    bias[H : 2 * H] = 1.0
    return bias


# ----------------------------------------------------------------------------- bad args
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"boundary": "gumbel"}, r"model.boundary='gumbel' is not a valid choice"),
        ({"num_layers": 0}, "num_layers must be an integer >= 1"),
        ({"hidden_size": 0}, "hidden_size must be a positive integer"),
        ({"z_bias_init": [1.0]}, r"z_bias_init needs one value per detector layer \(2\)"),
    ],
)
def test_bad_constructor_arguments(kwargs: dict, message: str) -> None:
    args = {"input_size": H_IN, "hidden_size": H, "num_layers": 3} | kwargs
    with pytest.raises(ValueError, match=message):
        HMLSTM(**args)


def test_bad_call_arguments() -> None:
    rnn = make()
    with pytest.raises(ValueError, match="input must be 3-d"):
        rnn(torch.randn(B, H_IN).double())
    with pytest.raises(ValueError, match="input_size=5"):
        rnn(torch.randn(T, B, H_IN + 1).double())
    with pytest.raises(ValueError, match=r"boundaries must have shape \(9, 4, 3\)"):
        rnn(torch.randn(T, B, H_IN).double(), boundaries=torch.zeros(T, B, 2).double())
    with pytest.raises(ValueError, match=r"state\.h must have shape"):
        bad = random_state(rnn, B + 1)
        rnn(torch.randn(T, B, H_IN).double(), bad)
    with pytest.raises(ValueError, match="step's input must be 2-d"):
        rnn.step(torch.randn(T, B, H_IN).double())


def test_the_slope_is_read_again_whenever_it_changes() -> None:
    """HMLSTM.slope_value() (what the loop reads, without a device synchronisation after
    set_slope) follows every way the buffer can change."""
    rnn = HMLSTM(3, 4, 2)
    assert rnn.slope_value() == 1.0
    rnn.set_slope(2.5)
    assert rnn.slope_value() == 2.5
    rnn.slope.fill_(3.0)  # in place, bypassing set_slope
    assert rnn.slope_value() == 3.0
    rnn.load_state_dict({**rnn.state_dict(), "slope": torch.tensor(4.0)})
    assert rnn.slope_value() == 4.0
    rnn.double()  # a new tensor
    rnn.slope.data = torch.tensor(5.0, dtype=torch.float64)
    assert rnn.slope_value() == 5.0
