"""Diagonal Gaussians parameterised by mean and log standard deviation, as VDVAE's latents are."""

from __future__ import annotations

import torch


def gaussian_kl(mean_q: torch.Tensor, logstd_q: torch.Tensor, mean_p: torch.Tensor, logstd_p: torch.Tensor) -> torch.Tensor:
    """Elementwise KL(q || p) between diagonal Gaussians, in nats.

    KL = log(s_p / s_q) + (s_q^2 + (m_q - m_p)^2) / (2 s_p^2) - 1/2
    """
    return logstd_p - logstd_q + 0.5 * (torch.exp(2 * logstd_q) + (mean_q - mean_p) ** 2) * torch.exp(-2 * logstd_p) - 0.5


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
