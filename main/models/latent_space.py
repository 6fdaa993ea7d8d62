"""Stage one in latent space, seen from outside as an image model.

`LatentSpaceModel` puts an autoencoder around a latent-space HierarchicalVAE and offers the VAE's own
interface (sample, reconstruct, encode_latents, the ELBO) on uint8 / [-1, 1] images, so evaluation, the
control tools and the refiner work the same whichever space stage one lives in.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from main.models.autoencoder import build_autoencoder, encode_images
from main.models.vdvae import ELBO, HierarchicalVAE
from main.models.vdvae.vae import check_image_shape
from main.utils.image_io import to_uint8


class LatentSpaceModel(nn.Module):
    def __init__(self, vae: HierarchicalVAE, autoencoder: nn.Module, image_size: int):
        super().__init__()
        self.vae, self.autoencoder = vae, autoencoder
        self.image_size, self.channels = image_size, autoencoder.image_channels

    @property
    def num_classes(self) -> int:
        return self.vae.num_classes

    @property
    def num_groups(self) -> int:
        return self.vae.num_groups

    def groups(self, k: int | str, key: str = "k", minimum: int = 0) -> int:
        return self.vae.groups(k, key, minimum)

    def latent_shapes(self, n: int) -> list[tuple[int, int, int, int]]:
        return self.vae.latent_shapes(n)

    def check_images(self, x: torch.Tensor) -> None:
        check_image_shape(x, self.channels, self.image_size)

    to_uint8 = staticmethod(to_uint8)  # decoded images have all 8 bits, whatever the VAE models

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 images -> the autoencoder latents the VAE models."""
        self.check_images(x)
        return encode_images(self.autoencoder, x)

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The VAE's normalised output -> images in [-1, 1]."""
        return self.autoencoder.decode(self.vae.denormalise(z)).clamp(-1, 1)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> ELBO:
        """Negative ELBO of images' latents (nats per latent dimension: a density, not pixel bits/dim)."""
        return self.vae(self.encode(x), labels)

    def importance_weighted_nll(self, x: torch.Tensor, labels=None, samples: int = 100, generator=None) -> torch.Tensor:
        return self.vae.importance_weighted_nll(self.encode(x), labels, samples, generator)

    def sample(
        self,
        n: int,
        labels: torch.Tensor | None = None,
        temperature: float | Sequence[float] = 1.0,
        generator: torch.Generator | None = None,
        output: str = "sample",
        noise=None,
        latents=None,
        guidance: tuple[float, float] = (0.0, 0.0),
    ) -> torch.Tensor:
        """n decoded samples in [-1, 1] (see HierarchicalVAE.sample)."""
        return self.decode(self.vae.sample(n, labels, temperature, generator, output, noise, latents, guidance))

    def reconstruct(self, x: torch.Tensor, labels=None, k: int | None = None, temperature=1.0, generator=None, output="sample"):
        """Images in [-1, 1] re-decoded with the first k latent groups from the posterior (see HierarchicalVAE.reconstruct)."""
        return self.decode(self.vae.reconstruct(self.encode(x), labels, k, temperature, generator, output))

    def encode_latents(self, x: torch.Tensor, labels=None, temperature: float = 0.0, generator=None) -> list[torch.Tensor]:
        return self.vae.encode_latents(self.encode(x), labels, temperature, generator)


def stage_one_model(model: dict, autoencoder: dict | None = None, image_size: int | None = None) -> nn.Module:
    """The image model a stage-one config describes: the VAE itself, or in latent space the VAE inside its autoencoder
    (``autoencoder``: the spec from `autoencoder_spec`; ``image_size``: the images' size in pixels)."""
    vae = HierarchicalVAE(**model)
    if autoencoder is None:
        return vae
    return LatentSpaceModel(vae, build_autoencoder(autoencoder).requires_grad_(False).eval(), image_size)
