"""Shared helpers for tests: composing the project's Hydra configs, tiny training runs, offline Inception weights."""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "main" / "configs"

# Training settings of every tiny test run: in-process data, CSV logs, no grids or progress bars, one CPU device.
QUIET_CPU_TRAINING = [
    "num_workers=0",
    "logger=csv",
    "samples.every_n_steps=0",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "trainer.accelerator=cpu",
    "trainer.devices=1",
]

# A digits model small enough to train in seconds.
TINY_DIGITS = [
    "dataset=digits",
    "vae=digits",
    "vae.model.width=16",
    "vae.model.zdim=4",
    "vae.model.num_mixtures=2",
    "vae.optim.warmup_steps=10",
    *QUIET_CPU_TRAINING,
]


def compose_config(name: str, overrides: list[str], **kwargs) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(config_name=name, overrides=overrides, **kwargs)


def tiny_train_config(run_dir: Path, *overrides: str) -> DictConfig:
    return compose_config("train_ae", [*TINY_DIGITS, f"run_dir={run_dir}", "name=test", *overrides])


# A refiner of the tiny digits model, small enough to train in seconds.
TINY_REFINER = [
    "dataset=digits",
    "ddpm=digits",
    "ddpm.unet.model_channels=16",
    "ddpm.unet.norm_groups=8",
    "ddpm.diffusion.num_timesteps=100",
    "ddpm.optim.warmup_steps=5",
    *QUIET_CPU_TRAINING,
]


def tiny_refiner_config(run_dir: Path, stage_one: Path | str | None, *overrides: str) -> DictConfig:
    stage = f"stage_one={stage_one}" if stage_one is not None else "stage_one=null"
    return compose_config("train_ddpm", [*TINY_REFINER, f"run_dir={run_dir}", "name=test", stage, *overrides])


def random_inception_weights(path: Path) -> Path:
    """A state_dict in the format torch-fidelity's loader expects, of its own network with random (He) weights: FID offline."""
    import torch_fidelity.feature_extractor_inceptionv3 as fe  # here: a 3 s import most tests do not need

    with (
        mock.patch.object(fe, "load_state_dict_from_url", lambda *a, **k: None),
        mock.patch.object(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None),
    ):
        net = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    generator = torch.Generator().manual_seed(0)
    for module in net.modules():
        if isinstance(module, torch.nn.Conv2d):  # the default init shrinks activations to ~1e-8 over the depth
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu", generator=generator)
    torch.save(net.state_dict(), path)
    return path


def user_error(fn, *args, **kwargs) -> str:
    """Run fn, expecting a UserError with a one-line message; return the message."""
    import pytest

    from main.utils.errors import UserError

    with pytest.raises(UserError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert message and "\n" not in message
    return message


class CreatesFile:
    """A pickle that, when loaded without restrictions, runs code: it creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def crafted_checkpoint(path: Path, marker: Path, stage: str = "vae") -> Path:
    """A checkpoint that looks like one of ours but would create ``marker`` if unpickled."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {}, "stage": stage, "hyper_parameters": {}, "payload": CreatesFile(marker)}, path)
    return path
