"""Lightning system for stage two: a DDPM that refines the frozen stage-one VAE's images (DiffuseVAE).

Training pairs each real image x with a stage-one image y computed on the fly, without gradients:
the VAE's reconstruction of x with its first ``k`` latent groups from the posterior and the rest drawn
from the prior at ``temperature`` (k = all gives the closest reconstruction, k = 0 an unrelated
sample), rendered as the likelihood's mean or a draw from it. The refiner learns p(x | y); sampling
draws y from the VAE's prior and refines it. Conditions are dropped per sample with probability
``conditioning.dropout`` so one network also gives the unconditional output for classifier-free
guidance. The frozen VAE's weights live inside the refiner's checkpoint, so a refiner checkpoint is
all that sampling needs. Updates are guarded as in stage one (`GuardedSystem`): a batch whose loss or
gradient is not finite never reaches the weights, the EMA or a checkpoint. Validation and sampling use
the EMA weights.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch.optim.swa_utils import AveragedModel

from main.models.diffusion import GaussianDiffusion, SamplerConfig, get_beta_schedule, sample_loop
from main.models.diffusion.corruptions import check_augmentation, random_corruption
from main.models.diffusion.guidance import ConditionedDenoiser, class_labels_for
from main.models.diffusion.unet import UNet
from main.models.latent_space import stage_one_model
from main.systems.common import GuardedSystem, adamw_with_warmup, check_optim, ema_update
from main.systems.stage_one import load_stage_one
from main.utils.errors import UserError
from main.utils.image_io import to_uint8, to_unit_range

# Stage one is frozen in eval mode on purpose; Lightning warns about any module in eval mode at fit start.
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode", category=UserWarning)


class StageTwoSystem(GuardedSystem):
    STAGE = "ddpm"
    RESUME_MUST_MATCH = {"data": "dataset", "diffusion": "ddpm.diffusion", "unet": "ddpm.unet"}
    FROZEN = {"stage_one": "stage_one"}

    def __init__(
        self,
        unet: dict,
        diffusion: dict,
        conditioning: dict,
        optim: dict,
        data: dict,
        stage_one: dict | None = None,
        activation_checkpointing: bool = False,
        preview_sampler: dict | None = None,
    ):
        """unet: UNet kwargs; diffusion: formulation, schedule, num_timesteps, prediction; conditioning: k, temperature,
        output, dropout; optim: lr, betas, weight_decay, warmup_steps, grad_clip, ema_rate, ema_warmup (and optionally
        skip_threshold, max_consecutive_skips); data: the data set config; stage_one: {checkpoint, model (VAE kwargs),
        data, global_step, autoencoder (latent space)}, None for the unconditional baseline; activation_checkpointing:
        recompute the UNet's block activations in the backward pass (a training setting); preview_sampler: the sampler
        settings of the training-time grids and FID (samples.sampler; None, as in older checkpoints: the defaults)."""
        super().__init__()
        check_optim(optim, "ddpm.optim")
        self.save_hyperparameters()
        self.preview_sampler = SamplerConfig.from_dict(preview_sampler or {}, "samples.sampler")
        self.unet = UNet(**unet, activation_checkpointing=activation_checkpointing)
        self.ema = AveragedModel(self.unet, multi_avg_fn=ema_update(optim["ema_rate"], optim.get("ema_warmup", True)), use_buffers=True)
        self.ema.requires_grad_(False)
        betas = get_beta_schedule(diffusion["schedule"], diffusion["num_timesteps"])
        self.diffusion = GaussianDiffusion(betas, diffusion["formulation"], diffusion.get("prediction", "eps"))
        if self.diffusion.is_conditional != (stage_one is not None):
            raise UserError(
                f"formulation {diffusion['formulation']!r} {'needs' if self.diffusion.is_conditional else 'takes no'} "
                "stage-one checkpoint: set stage_one=<path of a stage-one .ckpt>, or diffusion.formulation=unconditional"
            )
        self.stage_one = stage_one_model(stage_one["model"], stage_one.get("autoencoder"), data["image_size"]) if stage_one else None
        if self.stage_one is not None:
            self.stage_one.requires_grad_(False).eval()
            self.conditioning_k = self.stage_one.groups(conditioning["k"], "conditioning.k")
            check_augmentation(conditioning.get("corruption"))
        self.register_buffer("nonfinite_conditions", torch.zeros((), dtype=torch.long))

    @classmethod
    def with_stage_one(cls, path: str | Path, data: dict, unet: Callable[[int], dict], **kwargs) -> StageTwoSystem:
        """The refiner of the stage-one checkpoint at ``path``, with that stage one's EMA weights copied in so that the
        refiner's own checkpoints carry them; refused when stage one models images of another shape than ``data``.
        unet: the UNet kwargs for stage one's number of classes (0: not class-conditional); kwargs: the rest of __init__'s."""
        vae_system, checkpoint = load_stage_one(path)
        vae = vae_system.image_model  # in latent space: the VAE inside its autoencoder, both copied into the refiner
        if (vae.channels, vae.image_size) != (data["channels"], data["image_size"]):
            raise UserError(
                f"stage one '{path}' models {vae.channels}x{vae.image_size}x{vae.image_size} images but data set "
                f"'{data['name']}' has {data['channels']}x{data['image_size']}x{data['image_size']}: "
                "use the data set stage one was trained on"
            )
        hparams = checkpoint["hyper_parameters"]
        stage_one = {
            "checkpoint": str(Path(path).resolve()),
            "model": hparams["model"],
            "data": hparams["data"],
            "global_step": checkpoint.get("global_step"),
            "autoencoder": hparams.get("autoencoder"),
        }
        system = cls(unet=unet(hparams["model"].get("num_classes", 0)), data=data, stage_one=stage_one, **kwargs)
        system.stage_one.load_state_dict(vae.state_dict())
        return system

    @staticmethod
    def upgrade_checkpoint(checkpoint: dict[str, Any]) -> None:
        """Refiner checkpoints from before its guarded updates (Lightning's automatic optimisation) get zero skip
        counters, and their update count moves to where manual optimisation keeps it, so resume continues at that step."""
        for name in ("skipped_updates", "consecutive_skips"):
            checkpoint["state_dict"].setdefault(name, torch.zeros((), dtype=torch.long))
        loop = checkpoint.get("loops", {}).get("fit_loop", {})
        automatic = loop.get("epoch_loop.automatic_optimization.optim_progress", {}).get("optimizer", {}).get("step")
        manual = loop.get("epoch_loop.manual_optimization.optim_step_progress")
        if automatic and manual and automatic["total"]["completed"] and not manual["total"]["completed"]:
            loop["epoch_loop.manual_optimization.optim_step_progress"] = automatic

    def train(self, mode: bool = True):
        """Stage one stays in eval mode: it is frozen."""
        super().train(mode)
        if self.stage_one is not None:
            self.stage_one.eval()
        return self

    @property
    def image_shape(self) -> tuple[int, int, int]:
        u = self.unet
        return (u.out_channels, u.image_size, u.image_size)

    # ---- conditioning ------------------------------------------------------------------------------
    def vae_labels(self, labels: torch.Tensor | None) -> torch.Tensor | None:
        return labels if self.stage_one is not None and self.stage_one.num_classes else None

    @torch.no_grad()
    def condition(self, images: torch.Tensor, labels: torch.Tensor | None = None, generator=None, k: int | str | None = None):
        """Stage-one image y in [-1, 1] for uint8 images [N, C, H, W]: the VAE's reconstruction with the first k groups
        (None: the k the refiner was trained with)."""
        c = self.hparams.conditioning
        k = self.conditioning_k if k is None else k
        y = self.stage_one.reconstruct(
            images, self.vae_labels(labels), k=k, temperature=c["temperature"], generator=generator, output=c["output"]
        )
        return y.to(images.device, torch.float32)

    @torch.no_grad()
    def stage_one_samples(self, n: int, labels=None, temperature=1.0, generator=None, noise=None) -> torch.Tensor:
        """n stage-one images in [-1, 1] from the VAE's prior, rendered as in training (non-finite ones: the null condition)."""
        output = self.hparams.conditioning["output"]
        y = self.stage_one.sample(n, self.vae_labels(labels), temperature=temperature, generator=generator, output=output, noise=noise)
        return self.null_if_nonfinite(y)

    def null_if_nonfinite(self, y: torch.Tensor) -> torch.Tensor:
        """Replace non-finite stage-one images by the null condition (zeros), counting them in ``nonfinite_conditions``.

        A stage one decoding from its prior can overflow (measured: 1 image in ~10,000 for a 30-minute CIFAR-10 VAE
        with k = 4); one such image must not poison the refiner's weights with NaN, nor turn a sample black.
        """
        finite = torch.isfinite(y).flatten(1).all(dim=1)
        self.nonfinite_conditions += (~finite).sum()
        return torch.where(finite.reshape(-1, 1, 1, 1), y, torch.zeros_like(y))

    # ---- training ----------------------------------------------------------------------------------
    def configure_optimizers(self):
        return adamw_with_warmup(self.unet.parameters(), self.hparams.optim)

    def loss(self, unet: UNet, images: torch.Tensor, labels: torch.Tensor, keep=None, generator=None) -> torch.Tensor:
        """Per-image diffusion loss [N] of uint8 images with their stage-one conditions (all 8 bits, whatever stage one's bit depth)."""
        y = self.condition(images, labels, generator) if self.diffusion.is_conditional else None
        if y is not None:
            y = self.null_if_nonfinite(y)
            if self.training and self.hparams.conditioning.get("corruption"):  # augmentation: training only, not validation or sampling
                y = random_corruption(y, self.hparams.conditioning["corruption"], generator)
        denoiser = ConditionedDenoiser(unet, class_labels_for(unet, labels, len(images), images.device), keep)
        return self.diffusion.training_loss(denoiser, to_unit_range(images), y, generator=generator)

    def training_step(self, batch, batch_idx):
        images, labels = batch
        p = self.hparams.conditioning.get("dropout", 0.0)
        keep = torch.rand(len(images), device=images.device) >= p if p > 0 else None
        loss = self.loss(self.unet, images, labels, keep).mean()
        self.update(loss, self.unet, {"train/loss": loss})
        self.log("train/nonfinite_conditions", self.nonfinite_conditions.float(), on_step=True)

    def validation_step(self, batch, batch_idx):
        """EMA loss with the steps, noise and stage-one draws fixed per batch, so curves are comparable across validations."""
        images, labels = batch
        generator = torch.Generator(device=images.device).manual_seed(batch_idx)
        loss = self.loss(self.ema.module, images, labels, generator=generator).mean()
        self.log("val/loss", loss, on_epoch=True, prog_bar=True, sync_dist=True, batch_size=len(images))

    # ---- sampling ----------------------------------------------------------------------------------
    @torch.no_grad()
    def refine(
        self, y: torch.Tensor | None, sampler: SamplerConfig | Mapping, labels=None, n: int | None = None, noise=None, generator=None
    ) -> torch.Tensor:
        """Run the reverse process (EMA weights) conditioned on stage-one images y [N, C, H, W] in [-1, 1].

        sampler: a SamplerConfig, or a dict of its settings (main/configs/sampler/). n: batch size when y is None.
        Returns refined images in [-1, 1].
        """
        sampler = SamplerConfig.from_dict(sampler)
        unet = self.ema.module
        n = len(y) if y is not None else n
        denoiser = ConditionedDenoiser(unet, class_labels_for(unet, labels, n, self.device), guidance=sampler.guidance)
        x = sample_loop(
            sampler.chain(self.diffusion),
            denoiser,
            (n, *self.image_shape),
            y,
            noise=noise,
            generator=generator,
            device=self.device,
            dtype=torch.float32,
            **sampler.loop_kwargs(),
        )
        return x.clamp(-1.0, 1.0)

    @torch.no_grad()
    def generate(self, n: int, sampler: SamplerConfig | Mapping, labels=None, stage_one_temperature=1.0, generator=None):
        """Two-stage samples: (stage-one images, refined images), both in [-1, 1]; stage-one images are None without stage one."""
        y = self.stage_one_samples(n, labels, stage_one_temperature, generator) if self.stage_one is not None else None
        return y, self.refine(y, sampler, labels, n=n, generator=generator)

    def sample_images(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """n uint8 two-stage samples, refined, with the preview sampler (what FID scores during training)."""
        return to_uint8(self.generate(n, self.preview_sampler, generator=generator)[1])

    def preview_grid(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, int]:
        """(uint8 images, images per row) for the training-time grid: rows of stage-one samples, each above its refinements."""
        y, x = self.generate(n, self.preview_sampler, generator=generator)
        if y is None:
            return to_uint8(x), int(n**0.5)
        return interleave_rows(to_uint8(y), to_uint8(x), per_row=min(8, n)), min(8, n)


def interleave_rows(top: torch.Tensor, bottom: torch.Tensor, per_row: int) -> torch.Tensor:
    """[N, ...] and [N, ...] -> [2N, ...] ordered row by row: per_row of ``top``, the same per_row of ``bottom``, ..."""
    rows = [part for pair in zip(top.split(per_row), bottom.split(per_row)) for part in pair]
    return torch.cat(rows)


def load_stage_two(path: str | Path) -> tuple[StageTwoSystem, dict[str, Any]]:
    """Rebuild a trained refiner (with its frozen stage one) from its checkpoint alone."""
    return StageTwoSystem.from_checkpoint(path)
