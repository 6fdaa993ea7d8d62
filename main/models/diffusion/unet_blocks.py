"""Building blocks of the diffusion UNet (improved-diffusion layout): time embedding, ResBlock, attention, resampling."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding [N, dim] of (possibly fractional) steps t [N]: [cos(t w_i), sin(t w_i)],
    w_i = max_period^(-i / half), i = 0 .. half-1 (zero-padded when dim is odd)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim % 2))


def zero_init(module: nn.Module) -> nn.Module:
    """Zero a module's parameters (last layers of residual branches start as identity)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class TimestepBlock(nn.Module):
    """A module whose forward takes (h, emb)."""


class EmbedSequential(nn.Sequential):
    """Sequential that hands the embedding [N, E] to its TimestepBlocks."""

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for layer in self:
            h = layer(h, emb) if isinstance(layer, TimestepBlock) else layer(h)
        return h


class ResBlock(TimestepBlock):
    """GroupNorm-SiLU-conv, add the embedding (or FiLM it with use_scale_shift_norm), GroupNorm-SiLU-dropout-conv(zero),
    plus a skip (identity, or 1x1 conv when channels change). [N, C_in, H, W] -> [N, C_out, H, W]."""

    def __init__(self, channels, emb_channels, out_channels, dropout=0.0, use_scale_shift_norm=False, norm_groups=32):
        super().__init__()
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(nn.GroupNorm(norm_groups, channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels * (2 if use_scale_shift_norm else 1)))
        self.out_norm = nn.GroupNorm(norm_groups, out_channels)
        self.out_layers = nn.Sequential(nn.SiLU(), nn.Dropout(dropout), zero_init(nn.Conv2d(out_channels, out_channels, 3, padding=1)))
        self.skip = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x, emb):
        h = self.in_layers(x)
        e = self.emb_layers(emb)[:, :, None, None].to(h.dtype)
        if self.use_scale_shift_norm:
            scale, shift = e.chunk(2, dim=1)
            h = self.out_norm(h) * (1 + scale) + shift
        else:
            h = self.out_norm(h + e)
        return self.skip(x) + self.out_layers(h)


class AttentionBlock(nn.Module):
    """Multi-head self-attention over all H*W positions with a residual; [N, C, H, W] -> same."""

    def __init__(self, channels, num_heads=1, norm_groups=32):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"{channels} channels do not split into {num_heads} heads")
        self.num_heads = num_heads
        self.norm = nn.GroupNorm(norm_groups, channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = zero_init(nn.Conv1d(channels, channels, 1))

    def forward(self, x):
        n, c, *spatial = x.shape
        flat = x.reshape(n, c, -1)
        q, k, v = self.qkv(self.norm(flat)).chunk(3, dim=1)  # each [N, C, L]
        # contiguous: transposed views send SDPA to its slow math path on the CPU (measured 3x slower per call)
        q, k, v = (z.reshape(n, self.num_heads, c // self.num_heads, -1).transpose(-1, -2).contiguous() for z in (q, k, v))
        h = F.scaled_dot_product_attention(q, k, v)  # [N, heads, L, C/heads]
        h = h.transpose(-1, -2).reshape(n, c, -1)
        return (flat + self.proj_out(h)).reshape(n, c, *spatial)


class Downsample(nn.Module):
    """Stride-2 3x3 conv (conv_resample) or 2x2 average pooling; halves H and W."""

    def __init__(self, channels, use_conv=True):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1) if use_conv else nn.AvgPool2d(2)

    def forward(self, x):
        return self.op(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2 then (conv_resample) a 3x3 conv; doubles H and W."""

    def __init__(self, channels, use_conv=True):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1) if use_conv else nn.Identity()

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))
