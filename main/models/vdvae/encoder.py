"""Bottom-up encoder: a stack of residual blocks whose last activation at each resolution feeds the decoder."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from main.models.checkpointing import run_block
from main.models.vdvae.blocks import BlockSpec, Bottleneck, conv, depth_scale


def match_width(x: torch.Tensor, width: int) -> torch.Tensor:
    """Zero-pad or truncate channels so that per-resolution widths can differ."""
    c = x.shape[1]
    if c == width:
        return x
    if c > width:
        return x[:, :width]
    return F.pad(x, (0, 0, 0, 0, 0, width - c))


class Encoder(nn.Module):
    def __init__(
        self,
        channels: int,
        blocks: list[BlockSpec],
        widths: dict[int, int],
        bottleneck_multiple: float,
        image_size: int,
        activation_checkpointing: bool = False,
    ):
        super().__init__()
        self.widths = widths
        self.activation_checkpointing = activation_checkpointing
        self.in_conv = conv(channels, widths[image_size], 3)
        scale = depth_scale(len(blocks))
        self.blocks = nn.ModuleList(
            Bottleneck(
                widths[b.resolution],
                int(widths[b.resolution] * bottleneck_multiple),
                widths[b.resolution],
                b.resolution,
                residual=True,
                down_rate=b.down_rate,
                last_scale=scale,
            )
            for b in blocks
        )

    def forward(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        """Normalised images [B,C,H,W] -> {resolution: last activation at that resolution}."""
        h = self.in_conv(x)
        activations = {h.shape[-1]: h}
        for block in self.blocks:
            h = run_block(block, h, checkpointed=self.activation_checkpointing and self.training)
            h = match_width(h, self.widths[h.shape[-1]])
            activations[h.shape[-1]] = h
        return activations
