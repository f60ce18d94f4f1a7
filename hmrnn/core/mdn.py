"""Mixture density head for handwriting (model.md §3; Graves 2013).

Per step: M bivariate Gaussians over the pen offset (dx, dy), each with a weight, two means, two
standard deviations and a correlation, plus one Bernoulli end-of-stroke unit: 6M + 1 outputs
(121 for M = 20). Everything is computed in log space:

    log p(dx, dy, e) = logsumexp_k [log pi_k + log N(dx, dy | mu_k, sigma_k, rho_k)]
                       + e log sigmoid(s_e) + (1 - e) log sigmoid(-s_e)

with pi = softmax, sigma = exp(clamped log sigma), rho = (1 - eps) tanh, so no division by zero
and no log of zero, whatever the inputs.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LOG_SIGMA_MIN, LOG_SIGMA_MAX = -7.0, 7.0
RHO_BOUND = 1.0 - 1e-4
LOG_2PI = math.log(2 * math.pi)


class MixtureParams(NamedTuple):
    """The distribution of one point given the past.

    Shape: log_pi (..., M); mu (..., M, 2); log_sigma (..., M, 2); rho (..., M); eos_logit (...).
    """

    log_pi: Tensor
    mu: Tensor
    log_sigma: Tensor
    rho: Tensor
    eos_logit: Tensor


class MixtureDensityHead(nn.Module):
    """Linear map from the output embedding to the mixture's parameters.

    Args:
        input_size: E, the output embedding's size.
        num_components: M (20 in the paper's setup).
    """

    def __init__(self, input_size: int, num_components: int = 20) -> None:
        super().__init__()
        self.num_components = num_components
        self.linear = nn.Linear(input_size, 6 * num_components + 1)

    def forward(self, h: Tensor) -> MixtureParams:
        M = self.num_components
        out = self.linear(h)
        pi, mu, log_sigma, rho, eos = out.split([M, 2 * M, 2 * M, M, 1], dim=-1)
        return MixtureParams(
            log_pi=F.log_softmax(pi, dim=-1),
            mu=mu.unflatten(-1, (M, 2)),
            log_sigma=log_sigma.unflatten(-1, (M, 2)).clamp(LOG_SIGMA_MIN, LOG_SIGMA_MAX),
            rho=torch.tanh(rho) * RHO_BOUND,
            eos_logit=eos.squeeze(-1),
        )


def log_likelihood(params: MixtureParams, target: Tensor) -> Tensor:
    """log p(target) per point, in nats.

    Shape: target (..., 3) as (dx, dy, pen_up); returns (...).
    """
    offset = target[..., None, :2]  # (..., 1, 2) against (..., M, 2)
    z = (offset - params.mu) * torch.exp(-params.log_sigma)  # standardised, (..., M, 2)
    one_minus_rho2 = 1.0 - params.rho**2
    quad = (
        z[..., 0] ** 2 + z[..., 1] ** 2 - 2 * params.rho * z[..., 0] * z[..., 1]
    ) / one_minus_rho2
    log_normal = (
        -LOG_2PI - params.log_sigma.sum(-1) - 0.5 * torch.log(one_minus_rho2) - 0.5 * quad
    )  # (..., M)
    log_mix = torch.logsumexp(params.log_pi + log_normal, dim=-1)
    log_eos = -F.binary_cross_entropy_with_logits(
        params.eos_logit, target[..., 2], reduction="none"
    )
    return log_mix + log_eos


@torch.no_grad()
def sample(
    params: MixtureParams, generator: torch.Generator | None = None, temperature: float = 1.0
) -> Tensor:
    """One point per position drawn from the mixture: (..., 3) as (dx, dy, pen_up).

    ``temperature`` < 1 sharpens the component choice and shrinks the spread (1 samples the
    model's own distribution).
    """
    log_pi = params.log_pi / temperature
    lead = log_pi.shape[:-1]
    flat = torch.softmax(log_pi, -1).reshape(-1, log_pi.size(-1))
    k = torch.multinomial(flat, 1, generator=generator).view(*lead, 1)
    pick = lambda x: x.gather(-1, k).squeeze(-1)  # noqa: E731
    mu_x, mu_y = pick(params.mu[..., 0]), pick(params.mu[..., 1])
    scale = math.sqrt(temperature)
    s_x = pick(params.log_sigma[..., 0]).exp() * scale
    s_y = pick(params.log_sigma[..., 1]).exp() * scale
    rho = pick(params.rho)
    n1 = torch.randn(lead, generator=generator, device=mu_x.device, dtype=mu_x.dtype)
    n2 = torch.randn(lead, generator=generator, device=mu_x.device, dtype=mu_x.dtype)
    dx = mu_x + s_x * n1
    dy = mu_y + s_y * (rho * n1 + torch.sqrt(1 - rho**2) * n2)
    u = torch.rand(lead, generator=generator, device=mu_x.device, dtype=mu_x.dtype)
    pen = (u < torch.sigmoid(params.eos_logit)).to(mu_x.dtype)
    return torch.stack([dx, dy, pen], dim=-1)
