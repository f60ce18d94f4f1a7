"""Without autograd the HM-LSTM skips COPY rows and gated-off inputs (with layer norm too, with
and without the C++ cell): equal to the dense path.

(Training with imposed boundaries skips COPY rows too: tests/core/test_fused.py.)"""

from __future__ import annotations

import itertools

import pytest
import torch

from hmrnn.core import HMLSTM, HMLSTMState, fused

T, B, H_IN, H = 30, 40, 6, 8


def nested_boundaries(rates: tuple[float, ...], K: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    z = torch.zeros(T, B, K, dtype=torch.float64)
    alive = torch.ones(T, B, dtype=torch.float64)
    for l in range(K - 1):
        alive = alive * (torch.rand(T, B, generator=g) < rates[l]).double()
        z[:, :, l] = alive
    return z


@pytest.mark.parametrize(
    ("boundary", "top_layer_boundary", "num_layers"),
    list(itertools.product(["step", "bernoulli", "soft"], [False, True], [1, 2, 3])),
)
@pytest.mark.parametrize("layer_norm", [False, True], ids=["plain", "layer_norm"])
@pytest.mark.parametrize("native", [True, False], ids=["native", "torch_ops"])
def test_skipping_equals_dense(
    boundary: str,
    top_layer_boundary: bool,
    num_layers: int,
    layer_norm: bool,
    native: bool,
    monkeypatch,
) -> None:
    used = {"split": 0, "skip": 0}
    split, skip = fused.Loop.sparse_inputs, fused.Loop.skipping_cell
    gated = fused.loop.gated_multiply

    def counted_split(self, *args):
        s = split(self, *args)
        used["split"] += s is not None
        return s

    def counted_gated(mm, x, gate):  # layer norm's split of a gated projection
        if gate is not None and int((gate != 0).sum()) <= fused.loop.SPARSE_BELOW * x.size(0):
            used["split"] += 1
        return gated(mm, x, gate)

    def counted_skip(self, *args):
        used["skip"] += 1
        return skip(self, *args)

    monkeypatch.setattr(fused.loop, "SPARSE_MIN_WEIGHT", 0)  # skip at this tiny size too
    monkeypatch.setattr(fused.Loop, "sparse_inputs", counted_split)
    monkeypatch.setattr(fused.Loop, "skipping_cell", counted_skip)
    monkeypatch.setattr(fused.loop, "gated_multiply", counted_gated)
    torch.manual_seed(0)
    options = {"boundary": boundary, "top_layer_boundary": top_layer_boundary}
    rnn = HMLSTM(H_IN, H, num_layers, layer_norm=layer_norm, **options).double().eval()
    rnn.native = native
    with torch.no_grad():
        for l in range(num_layers):
            if rnn.has_detector(l):
                rnn.param("bias", l)[4 * H] = -1.0  # detectors fire rarely: many COPY rows
    x = torch.randn(T, B, H_IN).double()
    K = num_layers
    state = HMLSTMState(
        torch.randn(K, B, H).double(),
        torch.randn(K, B, H).double(),
        torch.randint(0, 2, (K, B)).double(),
    )
    for imposed in (None, nested_boundaries((0.3, 0.1), K)):
        with torch.no_grad():
            rnn.skip_copy = False
            dense = rnn(x, state, imposed)
            rnn.skip_copy = True
            sparse = rnn(x, state, imposed)
        torch.testing.assert_close(sparse[0], dense[0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(sparse[2], dense[2], rtol=1e-12, atol=1e-12)
        for a, b in zip(sparse[1], dense[1], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    if num_layers > 1:
        copy_share = 1 - (dense[2][:, :, 0]).mean()
        assert copy_share > 0.5, "the test must exercise the skipping path"
        assert used["skip"] > 0, "the test must exercise the row skipping"
        if boundary != "soft":  # soft gates are rarely exactly 0
            assert used["split"] > 0, "the test must exercise the gated-input split"


def test_bernoulli_training_without_autograd_draws_like_the_dense_path(monkeypatch) -> None:
    monkeypatch.setattr(fused.loop, "SPARSE_MIN_WEIGHT", 0)
    torch.manual_seed(0)
    rnn = HMLSTM(H_IN, H, 3, boundary="bernoulli").double().train()
    x = torch.randn(T, B, H_IN).double()
    with torch.no_grad():
        torch.manual_seed(5)
        rnn.skip_copy = False
        dense = rnn(x)
        torch.manual_seed(5)
        rnn.skip_copy = True
        sparse = rnn(x)
    assert torch.equal(sparse[2], dense[2])
    torch.testing.assert_close(sparse[0], dense[0], rtol=0, atol=0)


def test_small_layers_do_not_skip(monkeypatch) -> None:
    """Below SPARSE_MIN_WEIGHT the gather and scatter cost more than they save: dense steps."""
    calls = []
    monkeypatch.setattr(fused.Loop, "skipping_cell", lambda self, *a: calls.append(1))
    monkeypatch.setattr(fused.Loop, "sparse_inputs", lambda self, *a: calls.append(1))
    rnn = HMLSTM(H_IN, H, 3).eval()
    with torch.no_grad():
        rnn(torch.randn(T, B, H_IN), None, nested_boundaries((0.3, 0.1), 3).float())
    assert not calls
