"""Trained models in Python (notebooks, scripts): `load` a checkpoint, then `sample` images or score them (`bpd`).

    from main import load
    model = load("outputs/run/checkpoints/last.ckpt")   # a stage one or a refiner; everything comes from the file
    images = model.sample(16, seed=0)                    # uint8 [16, C, H, W]
    bpd = model.bpd(images)                              # stage one only

Sampling draws the images the evaluation commands draw: batch by batch with the same seeds, so `sample(n, seed=s)`
equals `test_ae.py tasks=[samples]` (a refiner: `test_ddpm.py`) with `samples.n=n seed=s` and the same batch size.
Guide: docs/python_api.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from main.evaluation.common import batch_generator, in_batches, pick_device
from main.models.diffusion import SamplerConfig
from main.systems.stage_one import StageOneSystem
from main.systems.stage_two import StageTwoSystem
from main.utils.checkpoint import load_checkpoint
from main.utils.errors import UserError
from main.utils.image_io import to_uint8

SYSTEMS = {system.STAGE: system for system in (StageOneSystem, StageTwoSystem)}
SAMPLERS = Path(__file__).parent / "configs" / "sampler"
Labels = int | Sequence[int] | torch.Tensor | None  # one class id for every image, or one per image (-1: none)


def load_system(path: str | Path) -> tuple[StageOneSystem | StageTwoSystem, dict[str, Any]]:
    """(system, checkpoint) of a stage-one or refiner checkpoint, whichever it is, reading the file once."""
    checkpoint = load_checkpoint(path, tuple(SYSTEMS))
    return SYSTEMS[checkpoint["stage"]].from_checkpoint(path, checkpoint)


def load(path: str | Path, device: str = "auto") -> StageOne | Refiner:
    """A trained stage one or refiner from its checkpoint alone, in eval mode with its EMA weights, on ``device``
    (auto: cuda if available, cpu, cuda:1, ...)."""
    system, checkpoint = load_system(path)
    model = StageOne(system, checkpoint) if isinstance(system, StageOneSystem) else Refiner(system, checkpoint)
    return model.to(pick_device(device))


class Trained:
    """What both stages offer: the system, its checkpoint's metadata, the device."""

    def __init__(self, system: StageOneSystem | StageTwoSystem, checkpoint: dict[str, Any]):
        self.system = system.eval()
        self.global_step = checkpoint.get("global_step")
        self.data = system.hparams.data  # the data set config it was trained on

    @property
    def device(self) -> torch.device:
        return self.system.device

    def to(self, device: str | torch.device) -> Trained:
        self.system.to(device)
        return self

    def _in_batches(self, n: int, seed: int, batch_size: int, labels, classes: int, draw) -> list:
        """[draw(count, labels of the batch, generator) for each batch], batched and seeded as the evaluation commands do."""
        check_count(n, "n")
        check_count(batch_size, "batch_size")
        labels = class_labels(labels, n, classes, self.device)
        return [
            draw(count, labels[start : start + count] if labels is not None else None, batch_generator(seed, start, self.device))
            for start, count in in_batches(n, batch_size)
        ]


class StageOne(Trained):
    """A trained stage one (the hierarchical VAE, in pixel or latent space)."""

    def __init__(self, system: StageOneSystem, checkpoint: dict[str, Any]):
        super().__init__(system, checkpoint)
        self.model = system.image_model  # the VAE, or in latent space the VAE inside its autoencoder

    @torch.no_grad()
    def sample(
        self,
        n: int,
        seed: int = 0,
        temperature: float | Sequence[float] = 1.0,
        labels: Labels = None,
        guidance: tuple[float, float] = (0.0, 0.0),
        output: str = "sample",
        batch_size: int = 64,
    ) -> torch.Tensor:
        """n uint8 images [n, C, H, W] from the prior, as `test_ae.py` draws samples (with labels: class_samples).

        temperature: of every group's prior, one value or one per latent group; labels: one class id for all or one
        per image (-1: none), class-conditional models only; guidance: classifier-free (mean, variance) weights of the
        prior; output: sample (pixels drawn from the likelihood) or mean (smooth)."""
        model = self.model

        def draw(count, batch_labels, generator):
            images = model.sample(count, batch_labels, temperature, generator, output, guidance=tuple(guidance))
            return model.to_uint8(images)

        return torch.cat(self._in_batches(n, seed, batch_size, labels, model.num_classes, draw)).cpu()

    @torch.no_grad()
    def bpd(self, images: torch.Tensor | DataLoader, labels: Labels = None, seed: int = 0, batch_size: int = 64) -> float:
        """Negative ELBO in bits per dimension, averaged over images, of uint8 images [N, C, H, W] (labels: class ids,
        -1 for none) or of a DataLoader of (images, labels) batches; as `test_ae.py tasks=[bpd]` scores the test split
        (given real labels: its test_bpd_given_label; given -1: its test_bpd). In latent space it is per latent
        dimension, not per pixel. ``seed`` fixes the posterior draws."""
        if isinstance(images, torch.Tensor):
            check_count(batch_size, "batch_size")
            labels = class_labels(labels, len(images), self.model.num_classes, "cpu")
            labels = torch.full((len(images),), -1) if labels is None else labels  # -1: no label
            batches = [(images[s : s + c], labels[s : s + c]) for s, c in in_batches(len(images), batch_size)]
        elif isinstance(images, DataLoader):
            batches = images
        else:
            raise UserError(f"bpd takes uint8 images [N, C, H, W] or a DataLoader of (images, labels), not a {type(images).__name__}")
        total, count = 0.0, 0
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):  # the caller's stream is kept
            torch.manual_seed(seed)
            for x, batch_labels in batches:
                if x.dtype != torch.uint8:
                    raise UserError(f"bpd scores uint8 images (0..255), not {x.dtype}: convert floats in [-1, 1] with image_io.to_uint8")
                self.model.check_images(x)
                total += float(self.model(x.to(self.device), batch_labels.to(self.device)).bits_per_dim.double().sum())
                count += len(x)
        if not count:
            raise UserError("bpd was given no images")
        return total / count


class Refiner(Trained):
    """A trained refiner with its frozen stage one (or the unconditional DDPM baseline)."""

    system: StageTwoSystem

    @torch.no_grad()
    def sample(
        self,
        n: int,
        seed: int = 0,
        sampler: str = "ddim",
        labels: Labels = None,
        stage_one_temperature: float | Sequence[float] = 1.0,
        batch_size: int = 64,
        with_stage_one: bool = False,
        **settings,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """n two-stage uint8 images [n, C, H, W] (stage-one samples, refined), as `test_ddpm.py` draws samples.

        sampler: a config of main/configs/sampler/ (ddim, ddpm, dpm_solver); settings: its keys, e.g. steps=20,
        temperature (of the initial noise), guidance (classifier-free weight), eta, start_step; labels: one class id for
        all or one per image, class-conditional models only; stage_one_temperature: of stage one's prior.
        with_stage_one: return (stage-one images, refined images)."""
        system = self.system
        config = sampler_config(sampler, settings)
        if with_stage_one and system.stage_one is None:
            raise UserError("with_stage_one=True: this checkpoint is the unconditional DDPM baseline, it has no stage one")
        classes = system.unet.num_classes or (system.stage_one.num_classes if system.stage_one is not None else 0)

        def draw(count, batch_labels, generator):
            y = system.stage_one_samples(count, batch_labels, stage_one_temperature, generator) if system.stage_one else None
            return y, system.refine(y, config, batch_labels, n=count, generator=generator)

        pairs = self._in_batches(n, seed, batch_size, labels, classes, draw)
        refined = to_uint8(torch.cat([x for _, x in pairs])).cpu()
        return (to_uint8(torch.cat([y for y, _ in pairs])).cpu(), refined) if with_stage_one else refined

    def bpd(self, *args, **kwargs):
        origin = (self.system.hparams.stage_one or {}).get("checkpoint")
        raise UserError(
            "a refiner has no bits/dim (its loss bounds no likelihood here): call bpd on its stage one, "
            + (f"load('{origin}')" if origin else "load(<stage-one .ckpt>)")
        )


def sampler_config(name: str, settings: dict[str, Any]) -> SamplerConfig:
    """main/configs/sampler/<name>.yaml (with its defaults) updated by ``settings``, each a key it has."""
    from hydra import compose, initialize_config_dir

    names = sorted(path.stem for path in SAMPLERS.glob("*.yaml") if not path.stem.startswith("_"))
    if name not in names:
        raise UserError(f"unknown sampler {name!r}: use one of {', '.join(names)} (main/configs/sampler/)")
    with initialize_config_dir(config_dir=str(SAMPLERS.parent), version_base="1.3"):
        config = dict(compose(config_name=f"sampler/{name}").sampler)
    unknown = sorted(key for key in settings if key not in config or key == "name")
    if unknown:
        keys = ", ".join(key for key in config if key != "name")
        raise UserError(f"{', '.join(unknown)}: not a setting of sampler {name!r}, which takes {keys}")
    return SamplerConfig.from_dict(config | settings)


def class_labels(labels, n: int, classes: int, device) -> torch.Tensor | None:
    """labels as a long tensor [n] of class ids (-1: none): None, one id for every image, or n ids."""
    if labels is None:
        return None
    if not classes:
        raise UserError("labels: this model is not class-conditional; leave labels=None")
    fix = f"labels: give one class id or {n} of them (one per image), each in 0..{classes - 1} or -1 for none"
    try:
        labels = torch.as_tensor(labels, device=device)
    except (TypeError, ValueError, RuntimeError):
        raise UserError(fix) from None
    labels = labels.expand(n) if labels.dim() == 0 else labels
    if labels.is_floating_point() or labels.shape != (n,) or not bool(((labels >= -1) & (labels < classes)).all()):
        raise UserError(fix)
    return labels.long()


def check_count(value, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"{name}={value!r}: use a positive whole number")
