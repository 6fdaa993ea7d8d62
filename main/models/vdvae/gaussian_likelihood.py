"""Diagonal Gaussian output head, for stage one in latent space: autoencoder latents are continuous, so the
likelihood is a density (nats per dimension can be negative and are not comparable with pixel bits/dim)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from main.models.vdvae.likelihood import LOG_SCALE_MIN


@dataclass
class GaussianParams:
    mean: torch.Tensor
    logstd: torch.Tensor


class GaussianOutput(nn.Module):
    """A 1x1 conv to a mean and a log standard deviation per latent channel."""

    def __init__(self, width: int, channels: int):
        super().__init__()
        self.channels = channels
        self.out_conv = nn.Conv2d(width, 2 * channels, 1)

    def forward(self, h: torch.Tensor) -> GaussianParams:
        mean, logstd = self.out_conv(h).float().chunk(2, dim=1)
        return GaussianParams(mean, logstd.clamp(min=LOG_SCALE_MIN))

    def log_prob(self, params: GaussianParams, x: torch.Tensor) -> torch.Tensor:
        """Elementwise log density of x [B,C,H,W]."""
        return -0.5 * math.log(2 * math.pi) - params.logstd - 0.5 * ((x.float() - params.mean) * torch.exp(-params.logstd)) ** 2

    def nll_per_dim(self, params: GaussianParams, x: torch.Tensor) -> torch.Tensor:
        """Negative log density per sample [B], in nats per dimension."""
        return -self.log_prob(params, x).flatten(1).mean(dim=1)

    def sample(self, params: GaussianParams, generator: torch.Generator | None = None) -> torch.Tensor:
        noise = torch.randn(params.mean.shape, device=params.mean.device, generator=generator)
        return params.mean + torch.exp(params.logstd) * noise

    def mean(self, params: GaussianParams) -> torch.Tensor:
        return params.mean
