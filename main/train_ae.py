"""Train stage one (the hierarchical VAE).

python main/train_ae.py dataset=cifar10 vae=cifar10_cpu trainer.max_steps=5000
python main/train_ae.py dataset=cifar10 trainer.devices=8 trainer.num_nodes=2   # VDVAE's preset
python main/train_ae.py ... resume=true                                          # continue run_dir
"""

from __future__ import annotations

try:  # first: puts the repository on sys.path
    from main import _bootstrap  # noqa: F401  (run as a package)
except ModuleNotFoundError:
    import _bootstrap  # noqa: F401  (run as `python main/<entry>.py`)
from pathlib import Path

import hydra
import lightning.pytorch as pl
import torch
from omegaconf import DictConfig
from torch import nn

from main.systems.latent_setup import prepare_latent_space
from main.systems.stage_one import StageOneSystem, val_bpd_key
from main.training import build_trainer as build_shared_trainer
from main.training import fit, seed_run, train_and_report
from main.utils.config import plain, print_config_tree
from main.utils.errors import UserError, exit_on_user_error, run_entry_point


def build_system(cfg: DictConfig, model: dict | None = None, autoencoder: nn.Module | None = None) -> StageOneSystem:
    """The system of cfg.vae; in latent space, ``model`` (sized to the latents) around the frozen ``autoencoder``."""
    kwargs = {
        "model": model or plain(cfg.vae.model),
        "optim": plain(cfg.vae.optim),
        "data": plain(cfg.dataset),
        "label_dropout": cfg.vae.label_dropout,
        "activation_checkpointing": cfg.vae.activation_checkpointing,
        "preview_temperature": plain(cfg.samples.temperature),
    }
    system = StageOneSystem(**kwargs) if autoencoder is None else StageOneSystem.with_autoencoder(autoencoder, **kwargs)
    return system.to(memory_format=torch.channels_last) if cfg.channels_last else system


def val_bpd(cfg: DictConfig) -> str:
    """The validation bits/dim best.ckpt follows and a sweeper minimises: val/bpd_given_label for a class-conditional model."""
    return val_bpd_key(cfg.vae.model.get("num_classes"))


def build_trainer(cfg: DictConfig) -> pl.Trainer:
    return build_shared_trainer(cfg, monitor=val_bpd(cfg))


def train(cfg: DictConfig) -> Path:
    """Fit stage one, on pixels or on an autoencoder's cached latents; returns the path of the last checkpoint."""
    seed_run(cfg.seed)
    if cfg.vae.space not in ("pixel", "latent"):
        raise UserError(f"vae.space={cfg.vae.space} is not a space: use pixel or latent")
    trainer = build_trainer(cfg)  # first: it resolves channels_last=auto
    if cfg.vae.space == "pixel":
        return fit(cfg, build_system(cfg), trainer, cfg.vae.batch_size)
    model, autoencoder, latents = prepare_latent_space(cfg, cfg.vae.batch_size, device=trainer.strategy.root_device)
    return fit(cfg, build_system(cfg, model, autoencoder), trainer, cfg.vae.batch_size, datamodule=latents)


@hydra.main(config_path="configs", config_name="train_ae", version_base="1.3")
@exit_on_user_error
def main(cfg: DictConfig) -> float | None:
    print_config_tree(cfg)
    return train_and_report(train, cfg, objective=val_bpd(cfg))  # what a sweeper minimises


if __name__ == "__main__":
    run_entry_point(main, Path(__file__).parent / "configs")
