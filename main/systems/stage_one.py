"""Lightning system that trains the hierarchical VAE the way VDVAE does.

AdamW with a linear warm-up, gradient clipping, and *skipped updates*: a step whose loss or gradient
norm is not finite, or whose gradient norm passes ``skip_threshold``, never touches the weights, the
optimizer state or the EMA. Skips are counted (and survive resume); too many in a row stop the run
with a clear message instead of stalling it forever. Validation and test use the EMA weights.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch.optim.swa_utils import AveragedModel

from main.models.vdvae import ELBO, HierarchicalVAE
from main.systems.common import ResumableSystem, adamw_with_warmup, ema_update
from main.utils.errors import UserError


class StageOneSystem(ResumableSystem):
    STAGE = "vae"

    def __init__(self, model: dict, optim: dict, data: dict, label_dropout: float = 0.0):
        """model: HierarchicalVAE kwargs; optim: lr, betas, weight_decay, warmup_steps, grad_clip,
        skip_threshold, max_consecutive_skips, ema_rate; data: the data set config (kept for evaluation)."""
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.vae = HierarchicalVAE(**model)
        self.ema = AveragedModel(self.vae, multi_avg_fn=ema_update(optim["ema_rate"], optim.get("ema_warmup", True)), use_buffers=True)
        self.ema.requires_grad_(False)
        self.register_buffer("skipped_updates", torch.zeros((), dtype=torch.long))
        self.register_buffer("consecutive_skips", torch.zeros((), dtype=torch.long))

    # ---- optimisation ------------------------------------------------------------------------------
    def configure_optimizers(self):
        return adamw_with_warmup(self.vae.parameters(), self.hparams.optim)

    def _drop_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """Replace labels by -1 (the null label) with probability label_dropout, so one model also samples unconditionally."""
        p = self.hparams.label_dropout
        if not self.vae.num_classes or p <= 0:
            return labels
        drop = torch.rand(labels.shape, device=labels.device) < p
        return torch.where(drop, torch.full_like(labels, -1), labels)

    def training_step(self, batch, batch_idx):
        x, labels = batch
        elbo = self.vae(x, self._drop_labels(labels))
        loss = elbo.loss.mean()
        optimizer = self.optimizers()
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        grad_norm = self._clip_gradients()
        o = self.hparams.optim
        healthy = bool(torch.isfinite(loss) & torch.isfinite(grad_norm) & (grad_norm < o["skip_threshold"]))  # one host sync
        if healthy:
            optimizer.step()
            self.lr_schedulers().step()
            self.ema.update_parameters(self.vae)
            self.consecutive_skips.zero_()
        else:
            self._skip_update(grad_norm)
        self._log_elbo("train", elbo, on_step=True)
        self.log_dict(
            {
                "train/grad_norm": grad_norm,
                "train/skipped_updates": self.skipped_updates.float(),
                "train/lr": optimizer.param_groups[0]["lr"],
            },
            on_step=True,
            prog_bar=False,
        )
        return loss

    def _clip_gradients(self) -> torch.Tensor:
        """Clip to grad_clip and return the unclipped norm; works on loss-scaled (16-mixed) gradients too."""
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        scale = float(scaler.get_scale()) if scaler is not None else 1.0
        norm = torch.nn.utils.clip_grad_norm_(self.vae.parameters(), self.hparams.optim["grad_clip"] * scale)
        return norm / scale

    def _skip_update(self, grad_norm: torch.Tensor) -> None:
        self.skipped_updates += 1
        self.consecutive_skips += 1
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        if scaler is not None and not torch.isfinite(grad_norm):  # fp16 overflow: lower the loss scale
            scaler.update(scaler.get_scale() * scaler.get_backoff_factor())
        limit = self.hparams.optim["max_consecutive_skips"]
        if self.consecutive_skips >= limit:
            raise UserError(
                f"{limit} updates in a row were skipped (last gradient norm {float(grad_norm):.3g}): "
                "raise optim.skip_threshold, lower optim.lr, or check the data"
            )

    def sample_grid_images(self, n: int, generator: torch.Generator, temperature: float = 1.0) -> tuple[torch.Tensor, int]:
        """(uint8 EMA samples, images per row) for the training-time grid."""
        vae = self.ema_vae
        return vae.to_uint8(vae.sample(n, temperature=temperature, generator=generator)), int(n**0.5)

    # ---- evaluation (EMA weights) ------------------------------------------------------------------
    @property
    def ema_vae(self) -> HierarchicalVAE:
        return self.ema.module

    def validation_step(self, batch, batch_idx):
        x, labels = batch
        self._log_elbo("val", self.ema_vae(x, labels), on_step=False)

    def test_step(self, batch, batch_idx):
        x, labels = batch
        self._log_elbo("test", self.ema_vae(x, labels), on_step=False)

    def _log_elbo(self, split: str, elbo: ELBO, on_step: bool) -> None:
        metrics = {
            f"{split}/loss": elbo.loss.mean(),
            f"{split}/bpd": elbo.bits_per_dim.mean(),
            f"{split}/distortion": elbo.distortion.mean(),
            f"{split}/rate": elbo.rate.mean(),
        }
        self.log_dict(
            metrics,
            on_step=on_step,
            on_epoch=not on_step,
            prog_bar=split != "train" or on_step,
            sync_dist=not on_step,
            batch_size=elbo.loss.shape[0],
        )
        if not on_step:
            active = (elbo.kl_per_group.mean(0) * math.prod(self.vae_shape) > 0.01).sum()
            self.log(f"{split}/active_groups", active.float(), on_epoch=True, sync_dist=True, batch_size=elbo.loss.shape[0])

    @property
    def vae_shape(self) -> tuple[int, int, int]:
        v = self.vae
        return (v.channels, v.image_size, v.image_size)


def load_stage_one(path: str | Path) -> tuple[StageOneSystem, dict[str, Any]]:
    """Rebuild a trained stage one from its checkpoint alone."""
    return StageOneSystem.from_checkpoint(path)
