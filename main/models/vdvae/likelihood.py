"""Discretized mixture of logistics (PixelCNN++) over 2**bits levels per channel.

Images live in [-1, 1]: level q of L = 2**bits - 1 sits at 2q/L - 1 (``level_grid="spread"``), and each
level owns the bin of half-width 1/L around it (the two end bins reach to -inf and +inf). VDVAE's low-bit
data keep the pixel value floor(x / 2**(8-bits)) * 2**(8-bits), so its levels sit at q * 2**(8-bits) / 127.5 - 1
(``level_grid="floor"``: -1 .. 0.945 at 5 bits, the top bin not open-ended); at 8 bits both grids agree. Colour images use PixelCNN++'s
channel dependence: the mean of G is shifted by a * R, the mean of B by b * R + c * G.

Parameter layout (channels of the output conv), kept identical to VDVAE's so its checkpoints load:
``K`` mixture logits, then per image channel ``K`` means, ``K`` log-scales and (colour only) ``K``
coefficients.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

LOG_SCALE_MIN = -7.0


def num_params(channels: int, num_mixtures: int) -> int:
    """Output channels needed for a mixture over images with ``channels`` channels."""
    per_channel = 3 if channels == 3 else 2  # mean, log-scale (+ one coefficient per colour channel)
    return num_mixtures * (1 + channels * per_channel)


class MixtureParams:
    """Split raw conv output [B, K*(1+C*P), H, W] into logits [B,K,H,W] and per-channel tensors [B,C,K,H,W]."""

    def __init__(self, raw: torch.Tensor, channels: int, num_mixtures: int):
        raw = raw.float()  # the likelihood is always computed in fp32, whatever the autocast dtype
        k = num_mixtures
        b, _, h, w = raw.shape
        self.logits = raw[:, :k]
        rest = raw[:, k:].reshape(b, channels, -1, h, w)
        self.means = rest[:, :, :k]
        self.log_scales = rest[:, :, k : 2 * k].clamp(min=LOG_SCALE_MIN)
        self.coeffs = torch.tanh(rest[:, :, 2 * k : 3 * k]) if channels == 3 else None

    def channel_means(self, x: torch.Tensor) -> torch.Tensor:
        """Means [B,C,K,H,W] given the (true or sampled) preceding channels x [B,C,H,W]."""
        if self.coeffs is None:
            return self.means
        r, g = x[:, 0:1, None], x[:, 1:2, None]  # [B,1,1,H,W]
        m, c = self.means, self.coeffs
        return torch.cat(
            [m[:, 0:1], m[:, 1:2] + c[:, 0:1] * r, m[:, 2:3] + c[:, 1:2] * r + c[:, 2:3] * g],
            dim=1,
        )


class DiscretizedMixtureLogistics(nn.Module):
    """Output head: a 1x1 conv to mixture parameters, the negative log-likelihood, samples and the mean."""

    def __init__(self, width: int, channels: int, num_mixtures: int, bits: int = 8, level_grid: str = "spread"):
        super().__init__()
        self.channels = channels
        self.num_mixtures = num_mixtures
        self.levels = 2**bits - 1
        self.pixel_step = 2 ** (8 - bits)  # 0..255 pixel values per level
        self.level_grid = level_grid
        self.spacing = {"spread": 2.0 / self.levels, "floor": self.pixel_step / 127.5}[level_grid]
        self.out_conv = nn.Conv2d(width, num_params(channels, num_mixtures), 1)

    def forward(self, h: torch.Tensor) -> MixtureParams:
        return MixtureParams(self.out_conv(h), self.channels, self.num_mixtures)

    def log_prob(self, params: MixtureParams, x: torch.Tensor) -> torch.Tensor:
        """Log-probability [B,H,W] of the pixels x [B,C,H,W] (values on the grid 2q/L - 1)."""
        x = x.float()
        means = params.channel_means(x)
        log_scales = params.log_scales
        x = x.unsqueeze(2)  # [B,C,1,H,W] against [B,C,K,H,W]
        centered = x - means
        inv_scale = torch.exp(-log_scales)
        half_bin = 1.0 / self.levels
        plus_in = inv_scale * (centered + half_bin)
        min_in = inv_scale * (centered - half_bin)
        log_cdf_plus = plus_in - F.softplus(plus_in)  # log sigmoid, for the lowest level
        log_one_minus_cdf_min = -F.softplus(min_in)  # for the highest level
        cdf_delta = torch.sigmoid(plus_in) - torch.sigmoid(min_in)
        mid_in = inv_scale * centered
        # Where the bin mass underflows, use density * bin width (PixelCNN++'s fallback).
        log_pdf_mid = mid_in - log_scales - 2.0 * F.softplus(mid_in) + math.log(2 * half_bin)
        log_mass = torch.where(
            x < -0.999,
            log_cdf_plus,
            torch.where(
                x > 0.999,
                log_one_minus_cdf_min,
                torch.where(cdf_delta > 1e-5, torch.log(cdf_delta.clamp(min=1e-12)), log_pdf_mid),
            ),
        )
        joint = log_mass.sum(dim=1) + F.log_softmax(params.logits, dim=1)  # [B,K,H,W]
        return torch.logsumexp(joint, dim=1)

    def nll_per_dim(self, params: MixtureParams, x: torch.Tensor) -> torch.Tensor:
        """Negative log-likelihood per sample [B], in nats per dimension."""
        return -self.log_prob(params, x).sum(dim=(1, 2)) / x[0].numel()

    def sample(self, params: MixtureParams, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw images in [-1, 1], [B,C,H,W]: pick a component (Gumbel-max), then a logistic per channel."""
        logits = params.logits
        u = torch.rand(logits.shape, device=logits.device, generator=generator).clamp(1e-5, 1 - 1e-5)
        component = (logits - torch.log(-torch.log(u))).argmax(dim=1, keepdim=True)  # [B,1,H,W]
        pick = F.one_hot(component.squeeze(1), self.num_mixtures).permute(0, 3, 1, 2).unsqueeze(1)
        means = (params.means * pick).sum(2)
        log_scales = (params.log_scales * pick).sum(2)
        u = torch.rand(means.shape, device=means.device, generator=generator).clamp(1e-5, 1 - 1e-5)
        noise = torch.exp(log_scales) * (torch.log(u) - torch.log1p(-u))
        if params.coeffs is None:
            return (means + noise).clamp(-1, 1)
        # G and B are conditioned on the *level* of the channels before them, as log_prob scores them.
        coeffs = (params.coeffs * pick).sum(2)
        r = self.snap((means[:, 0] + noise[:, 0]).clamp(-1, 1))
        g = self.snap((means[:, 1] + coeffs[:, 0] * r + noise[:, 1]).clamp(-1, 1))
        b = (means[:, 2] + coeffs[:, 1] * r + coeffs[:, 2] * g + noise[:, 2]).clamp(-1, 1)
        return torch.stack([r, g, b], dim=1)

    def snap(self, x: torch.Tensor) -> torch.Tensor:
        """Round [-1, 1] values to the nearest level's position on the grid."""
        return self.position(self.to_levels(x))

    def position(self, q: torch.Tensor) -> torch.Tensor:
        """Level indices -> their values in [-1, 1]."""
        return q.float() * self.spacing - 1.0

    def mean(self, params: MixtureParams) -> torch.Tensor:
        """Mixture mean in [-1, 1] (ignoring the bin edges): a deterministic image for the refiner."""
        weights = torch.softmax(params.logits, dim=1).unsqueeze(1)  # [B,1,K,H,W]
        if params.coeffs is None:
            component_means = params.means
        else:  # within a component E[G] = m_g + a * E[R] = m_g + a * m_r, and likewise for B
            m, c = params.means, params.coeffs
            r = m[:, 0]
            g = m[:, 1] + c[:, 0] * r
            b = m[:, 2] + c[:, 1] * r + c[:, 2] * g
            component_means = torch.stack([r, g, b], dim=1)
        return (weights * component_means).sum(2).clamp(-1, 1)

    def to_levels(self, x: torch.Tensor) -> torch.Tensor:
        """Map [-1, 1] to the nearest of the 2**bits levels, as integers."""
        return torch.round((x.float() + 1) / self.spacing).clamp(0, self.levels).long()
