"""Autoencoders whose latents a latent-space stage one models: ours (trained here) or a pretrained diffusers one.

Both expose ``encode(x) -> (mean, logvar)``, ``decode(z)``, ``image_channels``, ``latent_channels`` and
``downsample_factor``; ``autoencoder_spec`` and ``build_autoencoder`` rebuild either from a checkpoint's config.
"""

from __future__ import annotations

import torch
from torch import nn

from main.models.autoencoder.kl_autoencoder import KLAutoencoder
from main.models.autoencoder.pretrained import DiffusersAutoencoder
from main.utils.errors import UserError
from main.utils.image_io import to_unit_range


def autoencoder_spec(autoencoder: nn.Module) -> dict:
    """What rebuilds the architecture (the weights travel in the checkpoint's state dict)."""
    if isinstance(autoencoder, DiffusersAutoencoder):
        return {"kind": "diffusers", "config": {k: v for k, v in autoencoder.model.config.items() if not k.startswith("_")}}
    if isinstance(autoencoder, KLAutoencoder):
        return {"kind": "kl", "config": dict(autoencoder.hparams)}
    raise UserError(f"unknown autoencoder type {type(autoencoder).__name__}")


def build_autoencoder(spec: dict) -> nn.Module:
    kinds = {"kl": lambda c: KLAutoencoder(**c), "diffusers": DiffusersAutoencoder}
    if spec.get("kind") not in kinds:
        raise UserError(f"unknown autoencoder kind {spec.get('kind')!r} in the checkpoint: expected one of {sorted(kinds)}")
    return kinds[spec["kind"]](dict(spec["config"]))


@torch.no_grad()
def encode_images(autoencoder: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """uint8 images -> the posterior means of their latents (what a latent-space stage one models, and the latent cache holds)."""
    return autoencoder.encode(to_unit_range(images))[0]


__all__ = ["DiffusersAutoencoder", "KLAutoencoder", "autoencoder_spec", "build_autoencoder", "encode_images"]
