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
