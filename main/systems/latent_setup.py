"""Setting up a latent-space stage one (vae.space=latent): load the autoencoder, cache the data set's latents,
measure their shift and scale, and size the VAE to the latents."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import nn

from main.datasets import build_datamodule
from main.datasets.latents import LatentCache, LatentDataModule
from main.models.autoencoder import DiffusersAutoencoder
from main.systems.autoencoder import load_autoencoder
from main.utils.config import plain
from main.utils.errors import UserError


def load_autoencoder_source(source: str | None) -> nn.Module:
    """Our autoencoder's checkpoint (.ckpt), or a diffusers AutoencoderKL (a local folder or a hub name); frozen."""
    if not source:
        raise UserError("vae.space=latent needs vae.autoencoder: our autoencoder's .ckpt, or a diffusers AutoencoderKL folder or hub name")
    if str(source).endswith(".ckpt"):
        if not Path(source).is_file():
            raise UserError(
                f"autoencoder checkpoint '{source}' does not exist: train one (python main/train_autoencoder.py dataset=<name>) "
                "or pass a diffusers AutoencoderKL folder"
            )
        autoencoder = load_autoencoder(source)[0].autoencoder
    else:
        autoencoder = DiffusersAutoencoder.load(source)
    return autoencoder.eval().requires_grad_(False)


def prepare_latent_space(cfg: DictConfig, batch_size: int, device: torch.device | str = "cpu") -> tuple[dict, nn.Module, LatentDataModule]:
    """(VAE kwargs at latent resolution, autoencoder, data module of cached latents).

    Latents not cached yet are encoded on ``device``: the run's own (the Trainer's root device), not a guess.
    """
    autoencoder = load_autoencoder_source(cfg.vae.autoencoder)
    data = cfg.dataset
    factor = autoencoder.downsample_factor
    if data.channels != autoencoder.image_channels or data.image_size % factor:
        raise UserError(
            f"the autoencoder takes {autoencoder.image_channels}-channel images whose size divides by {factor}, "
            f"but {data.name} has {data.channels} channels at {data.image_size} px: use an autoencoder trained on this data set"
        )
    images = build_datamodule(data, batch_size=batch_size, num_workers=cfg.num_workers, seed=cfg.seed)
    cache = LatentCache(cfg.vae.latent_cache, images, autoencoder, device=device, batch_size=max(batch_size, 64)).build()
    shift, scale = cache.statistics()
    model = {
        **plain(cfg.vae.model),
        "image_size": data.image_size // factor,
        "channels": autoencoder.latent_channels,
        "likelihood": "gaussian",
        "pixel_mean": shift,
        "pixel_std": scale,
    }
    datamodule = LatentDataModule(cache, data, batch_size, num_workers=cfg.num_workers, seed=cfg.seed)
    return model, autoencoder, datamodule
