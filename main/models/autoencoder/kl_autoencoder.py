"""A small KL-regularised convolutional autoencoder (the first stage of latent diffusion, without the GAN and
perceptual losses), for data sets and machines where no pretrained autoencoder fits.

Images in [-1, 1] map to a diagonal Gaussian over latents with ``latent_channels`` channels at 1 / 2**(levels-1)
of the resolution; the KL to a standard normal keeps the latent scale bounded so a stage-one VAE can model it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from main.utils.errors import UserError


class ResidualBlock(nn.Module):
    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.GroupNorm(groups, channels),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.GroupNorm(groups, channels),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class KLAutoencoder(nn.Module):
    def __init__(
        self,
        image_channels: int,
        latent_channels: int = 4,
        base_channels: int = 32,
        channel_mults: tuple[int, ...] | list[int] = (1, 2),
        num_res_blocks: int = 1,
        norm_groups: int = 8,
    ):
        super().__init__()
        mults = list(channel_mults)
        self.hparams = dict(
            image_channels=image_channels,
            latent_channels=latent_channels,
            base_channels=base_channels,
            channel_mults=mults,
            num_res_blocks=num_res_blocks,
            norm_groups=norm_groups,
        )
        widths = [base_channels * m for m in mults]
        if not mults or any(w % norm_groups for w in widths):
            raise UserError(f"autoencoder widths {widths} must be non-empty multiples of norm_groups={norm_groups}")
        self.image_channels = image_channels
        self.latent_channels = latent_channels
        self.downsample_factor = 2 ** (len(mults) - 1)

        encoder: list[nn.Module] = [nn.Conv2d(image_channels, widths[0], 3, padding=1)]
        for level, width in enumerate(widths):
            if level:  # a strided conv halves the resolution and changes the width
                encoder.append(nn.Conv2d(widths[level - 1], width, 3, stride=2, padding=1))
            encoder += [ResidualBlock(width, norm_groups) for _ in range(num_res_blocks)]
        encoder += [nn.GroupNorm(norm_groups, widths[-1]), nn.SiLU(), nn.Conv2d(widths[-1], 2 * latent_channels, 3, padding=1)]
        self.encoder = nn.Sequential(*encoder)

        decoder: list[nn.Module] = [nn.Conv2d(latent_channels, widths[-1], 3, padding=1)]
        for level in reversed(range(len(widths))):
            decoder += [ResidualBlock(widths[level], norm_groups) for _ in range(num_res_blocks)]
            if level:
                decoder += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(widths[level], widths[level - 1], 3, padding=1)]
        decoder += [nn.GroupNorm(norm_groups, widths[0]), nn.SiLU(), nn.Conv2d(widths[0], image_channels, 3, padding=1)]
        self.decoder = nn.Sequential(*decoder)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images in [-1, 1] -> (mean, log variance) of the latent posterior."""
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents -> images (about [-1, 1]; clamp before saving)."""
        return self.decoder(z)

    def loss(self, x: torch.Tensor, kl_weight: float, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Mean squared error of a reconstruction from a posterior draw, plus kl_weight x the KL per latent element."""
        mean, logvar = self.encode(x)
        z = mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, device=mean.device, dtype=mean.dtype, generator=generator)
        mse = F.mse_loss(self.decode(z), x)
        kl = 0.5 * (mean**2 + logvar.exp() - 1.0 - logvar).mean()
        return {"loss": mse + kl_weight * kl, "mse": mse, "kl": kl}
