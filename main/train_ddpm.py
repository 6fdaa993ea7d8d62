"""Train stage two: a DDPM that refines a trained stage one's images (DiffuseVAE).

python main/train_ddpm.py dataset=cifar10 stage_one=outputs/cifar10-cifar10/checkpoints/last.ckpt
python main/train_ddpm.py dataset=cifar10 ddpm=cifar10_cpu stage_one=... ddpm.diffusion.formulation=form2
python main/train_ddpm.py ... resume=true                                   # continue run_dir
"""

from __future__ import annotations

try:  # first: puts the repository on sys.path
    from main import _bootstrap  # noqa: F401  (run as a package)
except ModuleNotFoundError:
    import _bootstrap  # noqa: F401  (run as `python main/<entry>.py`)
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from main.models.diffusion.unet import unet_kwargs
from main.systems.stage_two import StageTwoSystem
from main.training import build_trainer, fit, seed_run, train_and_report
from main.utils.config import plain, print_config_tree
from main.utils.errors import UserError, exit_on_user_error, run_entry_point


def refiner_num_classes(setting: bool | str, data: dict, vae_classes: int) -> int | None:
    """UNet classes for class_conditional auto | true | false (None: no class embedding)."""
    if setting == "auto":
        return vae_classes or None
    if setting is True:
        if not data["num_classes"]:
            raise UserError(f"ddpm.class_conditional=true but data set '{data['name']}' has no labels: set it to false or auto")
        return data["num_classes"]
    if setting is False:
        return None
    raise UserError(f"ddpm.class_conditional={setting!r}: use auto, true or false")


def refiner_unet_kwargs(cfg: DictConfig, vae_classes: int = 0) -> dict:
    """The refiner's full UNet arguments: its preset with the config's overrides, sized for the data set."""
    ddpm = plain(cfg.ddpm)
    unet_cfg = dict(ddpm["unet"])
    num_classes = refiner_num_classes(ddpm["class_conditional"], plain(cfg.dataset), vae_classes)
    return unet_kwargs(unet_cfg.pop("preset"), ddpm["diffusion"]["formulation"], **unet_cfg, num_classes=num_classes)


def build_system(cfg: DictConfig) -> StageTwoSystem:
    """The refiner of cfg.stage_one (its frozen EMA weights copied in), or the unconditional baseline without one."""
    ddpm = plain(cfg.ddpm)
    kwargs = {
        "diffusion": ddpm["diffusion"],
        "conditioning": ddpm["conditioning"],
        "optim": ddpm["optim"],
        "data": plain(cfg.dataset),
        "activation_checkpointing": ddpm["activation_checkpointing"],
        "preview_sampler": plain(cfg.samples.sampler),
    }
    if cfg.stage_one is None:
        system = StageTwoSystem(unet=refiner_unet_kwargs(cfg), **kwargs)
    else:
        system = StageTwoSystem.with_stage_one(cfg.stage_one, unet=lambda vae_classes: refiner_unet_kwargs(cfg, vae_classes), **kwargs)
    return system.to(memory_format=torch.channels_last) if cfg.channels_last else system


def train(cfg: DictConfig) -> Path:
    """Fit the refiner; returns the path of the last checkpoint."""
    seed_run(cfg.seed)
    trainer = build_trainer(cfg, monitor="val/loss")
    return fit(cfg, build_system(cfg), trainer, cfg.ddpm.batch_size)


@hydra.main(config_path="configs", config_name="train_ddpm", version_base="1.3")
@exit_on_user_error
def main(cfg: DictConfig) -> float | None:
    print_config_tree(cfg)
    return train_and_report(train, cfg, objective="val/loss")  # what a sweeper minimises


if __name__ == "__main__":
    run_entry_point(main, Path(__file__).parent / "configs")
