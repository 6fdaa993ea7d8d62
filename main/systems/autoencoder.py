"""Lightning system that trains our small KL autoencoder, the first stage of a latent-space stage one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from main.models.autoencoder import KLAutoencoder
from main.systems.common import ResumableSystem, adamw_with_warmup, check_optim
from main.utils.image_io import to_uint8, to_unit_range


class AutoencoderSystem(ResumableSystem):
    STAGE = "autoencoder"
    RESUME_MUST_MATCH = {"data": "dataset", "model": "autoencoder.model"}

    def __init__(self, model: dict, optim: dict, data: dict):
        """model: KLAutoencoder kwargs; optim: lr, betas, weight_decay, warmup_steps, grad_clip, kl_weight; data: the data set config."""
        super().__init__()
        check_optim(optim, "autoencoder.optim")
        self.save_hyperparameters()
        self.autoencoder = KLAutoencoder(**model)

    def configure_optimizers(self):
        return adamw_with_warmup(self.autoencoder.parameters(), self.hparams.optim)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        self.clip_gradients(optimizer, gradient_clip_val=self.hparams.optim["grad_clip"], gradient_clip_algorithm="norm")

    def _step(self, split: str, batch) -> torch.Tensor:
        images, _ = batch
        terms = self.autoencoder.loss(to_unit_range(images), self.hparams.optim["kl_weight"])
        metrics = {f"{split}/{name}": value for name, value in terms.items()}
        metrics[f"{split}/psnr"] = 10 * torch.log10(4.0 / terms["mse"].detach())  # images span 2: peak^2 = 4
        on_step = split == "train"
        self.log_dict(metrics, on_step=on_step, on_epoch=not on_step, prog_bar=True, sync_dist=not on_step, batch_size=len(images))
        return terms["loss"]

    def training_step(self, batch, batch_idx):
        return self._step("train", batch)

    def validation_step(self, batch, batch_idx):
        self._step("val", batch)

    def test_step(self, batch, batch_idx):
        self._step("test", batch)

    @torch.no_grad()
    def preview_grid(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, int]:
        """(uint8 images, images per row): rows of validation images, each above its reconstruction."""
        val = self.trainer.datamodule.split("val")
        per_row = min(8, n)
        images = torch.stack([val[i][0] for i in range(min(per_row, len(val)))]).to(self.device)
        mean, _ = self.autoencoder.encode(to_unit_range(images))
        return torch.cat([images, to_uint8(self.autoencoder.decode(mean))]), len(images)


def load_autoencoder(path: str | Path) -> tuple[AutoencoderSystem, dict[str, Any]]:
    """Rebuild a trained autoencoder from its checkpoint alone."""
    return AutoencoderSystem.from_checkpoint(path)
