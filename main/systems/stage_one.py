"""Lightning system that trains the hierarchical VAE the way VDVAE does.

AdamW with a linear warm-up, gradient clipping, and *skipped updates* (`GuardedSystem`): a step whose
loss or gradient norm is not finite, or whose gradient norm passes ``skip_threshold``, never touches the
weights, the optimizer state or the EMA. Validation and test use the EMA weights. In latent space
(``autoencoder`` set) the VAE models a frozen autoencoder's latents: cached ones in training, and the
latents of images wherever uint8 images arrive; `image_model` then decodes to images.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from main.models.autoencoder import autoencoder_spec, build_autoencoder, encode_images
from main.models.latent_space import LatentSpaceModel
from main.models.vdvae import ELBO, HierarchicalVAE
from main.systems.common import GuardedSystem, adamw_with_warmup, check_optim, ema_update


class StageOneSystem(GuardedSystem):
    STAGE = "vae"
    RESUME_MUST_MATCH = {"data": "dataset", "model": "vae.model", "autoencoder": "vae.autoencoder"}
    FROZEN = {"autoencoder": "vae.autoencoder"}

    def __init__(
        self,
        model: dict,
        optim: dict,
        data: dict,
        label_dropout: float = 0.0,
        autoencoder: dict | None = None,
        activation_checkpointing: bool = False,
        preview_temperature: float | list[float] = 1.0,
    ):
        """model: HierarchicalVAE kwargs; optim: lr, betas, weight_decay, warmup_steps, grad_clip,
        skip_threshold, max_consecutive_skips, ema_rate; data: the data set config (kept for evaluation);
        autoencoder: in latent space, the spec of the frozen autoencoder whose latents the VAE models;
        activation_checkpointing: recompute the VAE's block activations in the backward pass (a training setting);
        preview_temperature: the prior's temperature in the training-time grids and FID (samples.temperature)."""
        super().__init__()
        check_optim(optim, "vae.optim")
        self.save_hyperparameters()
        self.vae = HierarchicalVAE(**model, activation_checkpointing=activation_checkpointing)
        self.autoencoder = build_autoencoder(autoencoder).requires_grad_(False).eval() if autoencoder else None
        self.ema = AveragedModel(self.vae, multi_avg_fn=ema_update(optim["ema_rate"], optim.get("ema_warmup", True)), use_buffers=True)
        self.ema.requires_grad_(False)

    @classmethod
    def with_autoencoder(cls, autoencoder: nn.Module, **kwargs) -> StageOneSystem:
        """A latent-space system modelling ``autoencoder``'s latents, with its weights copied in so that the checkpoint
        carries them (resuming and evaluation rebuild it from there alone); kwargs: the rest of __init__'s."""
        system = cls(autoencoder=autoencoder_spec(autoencoder), **kwargs)
        system.autoencoder.load_state_dict(autoencoder.state_dict())
        return system

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

    def train(self, mode: bool = True):
        """The autoencoder stays in eval mode: it is frozen."""
        super().train(mode)
        if self.autoencoder is not None:
            self.autoencoder.eval()
        return self

    def _inputs(self, x: torch.Tensor) -> torch.Tensor:
        """What the VAE models: the batch itself, or in latent space the latents of uint8 images (cached ones pass through)."""
        return encode_images(self.autoencoder, x) if self.autoencoder is not None and x.dtype == torch.uint8 else x

    def training_step(self, batch, batch_idx):
        x, labels = batch
        elbo = self.vae(self._inputs(x), self._drop_labels(labels))
        self.update(elbo.loss.mean(), self.vae, elbo_metrics("train", elbo))

    def sample_images(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """n uint8 EMA samples at the preview temperature, for the training-time grid and FID."""
        model = self.image_model
        return model.to_uint8(model.sample(n, temperature=self.hparams.preview_temperature, generator=generator))

    # ---- evaluation (EMA weights) ------------------------------------------------------------------
    @property
    def ema_vae(self) -> HierarchicalVAE:
        return self.ema.module

    @property
    def image_model(self) -> HierarchicalVAE | LatentSpaceModel:
        """The EMA weights as a model of images: the VAE, or in latent space the VAE inside its autoencoder."""
        if self.autoencoder is None:
            return self.ema_vae
        return LatentSpaceModel(self.ema_vae, self.autoencoder, self.hparams.data["image_size"])

    def validation_step(self, batch, batch_idx):
        x, labels = batch
        self._log_eval("val", self.ema_vae(self._inputs(x), labels), bpd=val_bpd_key(self.vae.num_classes))

    def test_step(self, batch, batch_idx):
        x, labels = batch
        self._log_eval("test", self.ema_vae(self._inputs(x), labels), bpd="test/bpd")  # evaluation names its passes

    def _log_eval(self, split: str, elbo: ELBO, bpd: str) -> None:
        """Epoch means over every rank's images (bits/dim under the name ``bpd``), and the number of latent groups that
        carry information."""
        n = elbo.loss.shape[0]
        metrics = elbo_metrics(split, elbo)
        metrics[bpd] = metrics.pop(f"{split}/bpd")
        self.log_dict(metrics, on_epoch=True, prog_bar=True, sync_dist=True, batch_size=n)
        active = (elbo.kl_per_group.mean(0) * math.prod(self.vae_shape) > 0.01).sum()
        self.log(f"{split}/active_groups", active.float(), on_epoch=True, sync_dist=True, batch_size=n)

    @staticmethod
    def upgrade_checkpoint(checkpoint: dict[str, Any]) -> None:
        """A class-conditional run saved while its validation bits/dim was still logged as val/bpd holds best.ckpt's state
        under that monitor: move it to val/bpd_given_label, so that resuming it keeps the best score (and best.ckpt)."""
        if not checkpoint.get("hyper_parameters", {}).get("model", {}).get("num_classes"):
            return
        callbacks, new = checkpoint.get("callbacks", {}), val_bpd_key(True)
        for key in [key for key in callbacks if "'monitor': 'val/bpd'," in key]:
            callbacks[key.replace("'val/bpd'", repr(new))] = {**callbacks.pop(key), "monitor": new}

    @property
    def vae_shape(self) -> tuple[int, int, int]:
        v = self.vae
        return (v.channels, v.image_size, v.image_size)


def val_bpd_key(num_classes: int | None) -> str:
    """The name validation's bits/dim is logged under: a class-conditional model is scored given each image's label, so
    its number is -log p(x|c), named as evaluation names it (test_bpd_given_label), not -log p(x)."""
    return "val/bpd_given_label" if num_classes else "val/bpd"


def elbo_metrics(split: str, elbo: ELBO) -> dict[str, torch.Tensor]:
    return {
        f"{split}/loss": elbo.loss.mean(),
        f"{split}/bpd": elbo.bits_per_dim.mean(),
        f"{split}/distortion": elbo.distortion.mean(),
        f"{split}/rate": elbo.rate.mean(),
    }


def load_stage_one(path: str | Path) -> tuple[StageOneSystem, dict[str, Any]]:
    """Rebuild a trained stage one from its checkpoint alone."""
    return StageOneSystem.from_checkpoint(path)
