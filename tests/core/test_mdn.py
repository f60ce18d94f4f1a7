"""The mixture density head: its likelihood is the density, its samples follow it, no NaN."""

from __future__ import annotations

import math

import torch

from hmrnn.core.mdn import MixtureDensityHead, MixtureParams, log_likelihood, sample


def tiny_params() -> MixtureParams:
    return MixtureParams(
        log_pi=torch.log(torch.tensor([[0.3, 0.7]], dtype=torch.float64)),
        mu=torch.tensor([[[0.5, -1.0], [-2.0, 0.25]]], dtype=torch.float64),
        log_sigma=torch.log(torch.tensor([[[0.8, 1.5], [0.4, 0.6]]], dtype=torch.float64)),
        rho=torch.tensor([[0.6, -0.3]], dtype=torch.float64),
        eos_logit=torch.tensor([0.4], dtype=torch.float64),
    )


def direct_density(p: MixtureParams, x: float, y: float, e: float) -> float:
    """The textbook bivariate normal mixture times the Bernoulli, written out."""
    total = 0.0
    for k in range(2):
        w = math.exp(p.log_pi[0, k])
        m1, m2 = p.mu[0, k].tolist()
        s1, s2 = torch.exp(p.log_sigma[0, k]).tolist()
        r = p.rho[0, k].item()
        z = ((x - m1) / s1) ** 2 + ((y - m2) / s2) ** 2 - 2 * r * (x - m1) * (y - m2) / (s1 * s2)
        norm = 1 / (2 * math.pi * s1 * s2 * math.sqrt(1 - r * r))
        total += w * norm * math.exp(-z / (2 * (1 - r * r)))
    q = 1 / (1 + math.exp(-p.eos_logit[0].item()))
    return total * (q if e else 1 - q)


def test_log_likelihood_equals_the_direct_density() -> None:
    p = tiny_params()
    for x, y, e in [(0.1, -0.7, 1.0), (-1.5, 0.0, 0.0), (3.0, 2.0, 1.0)]:
        got = log_likelihood(p, torch.tensor([[x, y, e]], dtype=torch.float64)).item()
        assert abs(got - math.log(direct_density(p, x, y, e))) < 1e-10


def test_samples_follow_the_distribution() -> None:
    p = tiny_params()
    n = 200_000
    big = MixtureParams(*(t.expand(n, *t.shape[1:]) for t in p))
    draws = sample(big, torch.Generator().manual_seed(0))
    w = torch.exp(p.log_pi[0])
    mean = (w[:, None] * p.mu[0]).sum(0)
    assert torch.allclose(draws[:, :2].mean(0), mean, atol=0.02)
    s = torch.exp(p.log_sigma[0])
    # E[dx * dy] = sum_k w_k (rho_k s1 s2 + mu1 mu2)
    cross = (w * (p.rho[0] * s[:, 0] * s[:, 1] + p.mu[0, :, 0] * p.mu[0, :, 1])).sum()
    assert abs((draws[:, 0] * draws[:, 1]).mean() - cross) < 0.03
    assert abs(draws[:, 2].mean() - torch.sigmoid(p.eos_logit[0])) < 0.005


def test_extreme_inputs_give_finite_likelihood_and_gradients() -> None:
    torch.manual_seed(0)
    head = MixtureDensityHead(8, 20)
    assert head.linear.out_features == 121
    h = torch.randn(50, 4, 8) * 1e4  # saturates tanh, softmax and the sigma clamp
    target = torch.randn(50, 4, 3) * 100
    target[..., 2] = (target[..., 2] > 0).float()
    ll = log_likelihood(head(h), target)
    ll.sum().backward()
    assert torch.isfinite(ll).all()
    assert all(torch.isfinite(q.grad).all() for q in head.parameters())


def test_handwriting_model_counts_real_points_only() -> None:
    from hmrnn.core.handwriting import HandwritingModel

    torch.manual_seed(0)
    model = HandwritingModel(hidden_size=8, num_layers=2, output_size=8, num_components=3)
    inputs = torch.randn(6, 2, 3)
    targets = torch.randn(6, 2, 3)
    targets[..., 2] = 0.0
    mask = torch.ones(6, 2, dtype=torch.bool)
    mask[4:, 1] = False  # the second sequence has 4 target points
    out = model(inputs, targets, mask)
    short = model(inputs[:4, 1:], targets[:4, 1:])  # the same sequence alone, unpadded
    assert torch.allclose(out.sequence_ll[1], short.sequence_ll[0], atol=1e-5)
    assert (out.point_ll[4:, 1] == 0).all()
    points, bounds = model.generate(5, batch_size=2, generator=torch.Generator().manual_seed(1))
    assert points.shape == (5, 2, 3) and bounds.shape == (5, 2, 2)
    assert set(points[..., 2].unique().tolist()) <= {0.0, 1.0}
