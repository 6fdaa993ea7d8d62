"""A pretrained diffusers ``AutoencoderKL`` (Stable Diffusion's KL-f8 and its kin) behind our autoencoder interface."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from main.utils.errors import UserError


class DiffusersAutoencoder(nn.Module):
    """Wraps an AutoencoderKL: encode -> (mean, log variance), decode -> images in about [-1, 1]."""

    def __init__(self, config: dict):
        super().__init__()
        from diffusers import AutoencoderKL

        self.model = AutoencoderKL.from_config(config)
        self.image_channels = self.model.config.in_channels
        self.latent_channels = self.model.config.latent_channels
        self.downsample_factor = 2 ** (len(self.model.config.block_out_channels) - 1)

    @classmethod
    def load(cls, name_or_folder: str) -> DiffusersAutoencoder:
        """From a local folder (``save_pretrained`` layout) or, with internet, a Hugging Face hub name."""
        from diffusers import AutoencoderKL

        local = Path(name_or_folder).expanduser()
        if local.is_dir() and not any(local.glob("*.safetensors")):
            raise UserError(
                f"the folder '{local}' has no safetensors weights (a pickled .bin is not loaded: that could run code): "
                f"convert it where you trust it with AutoencoderKL.from_pretrained(folder).save_pretrained(folder)"
            )
        source = str(local) if local.is_dir() else name_or_folder
        try:  # safetensors only, from the hub too
            pretrained = AutoencoderKL.from_pretrained(source, low_cpu_mem_usage=False, use_safetensors=True)
        except (OSError, ValueError) as error:
            if local.is_dir():
                raise UserError(
                    f"could not load the autoencoder in '{local}' ({str(error).splitlines()[0]}): "
                    "pass a folder written by AutoencoderKL.save_pretrained (config.json and the .safetensors weights)"
                ) from None
            raise UserError(
                f"could not load the autoencoder '{name_or_folder}' from the Hugging Face hub ({type(error).__name__}): "
                f"on a machine with internet run `huggingface-cli download {name_or_folder} --local-dir <folder>` and pass that folder"
            ) from None
        wrapper = cls(dict(pretrained.config))
        wrapper.model.load_state_dict(pretrained.state_dict())
        return wrapper

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        posterior = self.model.encode(x).latent_dist
        return posterior.mean, posterior.logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.model.decode(z).sample
