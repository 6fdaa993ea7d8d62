"""Diagonal Gaussians parameterised by mean and log standard deviation, as VDVAE's latents are."""

from __future__ import annotations

import torch


def gaussian_kl(mean_q: torch.Tensor, logstd_q: torch.Tensor, mean_p: torch.Tensor, logstd_p: torch.Tensor) -> torch.Tensor:
    """Elementwise KL(q || p) between diagonal Gaussians, in nats.

    KL = log(s_p / s_q) + (s_q^2 + (m_q - m_p)^2) / (2 s_p^2) - 1/2
    """
    return logstd_p - logstd_q + 0.5 * (torch.exp(2 * logstd_q) + (mean_q - mean_p) ** 2) * torch.exp(-2 * logstd_p) - 0.5


def gaussian_log_ratio(
    z: torch.Tensor, mean_q: torch.Tensor, logstd_q: torch.Tensor, mean_p: torch.Tensor, logstd_p: torch.Tensor
) -> torch.Tensor:
    """Elementwise log q(z) - log p(z) at a drawn z: the one-sample estimate of KL(q || p).

    Importance weighting needs the density ratio at the z actually drawn, not its expectation.
    """
    return logstd_p - logstd_q + 0.5 * (((z - mean_p) * torch.exp(-logstd_p)) ** 2 - ((z - mean_q) * torch.exp(-logstd_q)) ** 2)


def gaussian_sample(
    mean: torch.Tensor,
    logstd: torch.Tensor,
    temperature: float = 1.0,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw mean + temperature * std * eps; ``noise`` fixes eps (for figures and interpolation)."""
    if noise is None:
        noise = torch.randn(mean.shape, device=mean.device, dtype=mean.dtype, generator=generator)
    return mean + temperature * torch.exp(logstd) * noise


def guided_prior(mean: torch.Tensor, logstd: torch.Tensor, mean_weight: float, variance_weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Classifier-free guidance of a prior computed for [conditional; unconditional] halves of a batch.

    mean = m_c + w_m (m_c - m_u);  variance = v_c (v_c / v_u)^w_v, i.e. log std = s_c + w_v (s_c - s_u).
    Weights 0 give the conditional prior itself.
    """
    (mean_c, mean_u), (logstd_c, logstd_u) = mean.chunk(2), logstd.chunk(2)
    return mean_c + mean_weight * (mean_c - mean_u), logstd_c + variance_weight * (logstd_c - logstd_u)
