"""Train our small KL autoencoder, whose latents a latent-space stage one models.

python main/train_autoencoder.py dataset=cifar10 dataset.root=../shared/data trainer.max_steps=5000
python main/train_ae.py dataset=cifar10 vae=cifar10_latent_cpu vae.autoencoder=outputs/cifar10-autoencoder-kl_f4/checkpoints/last.ckpt
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

from main.systems.autoencoder import AutoencoderSystem
from main.training import build_trainer, fit, seed_run, train_and_report
from main.utils.config import plain, print_config_tree
from main.utils.errors import exit_on_user_error, run_entry_point


def train(cfg: DictConfig) -> Path:
    """Fit the autoencoder; returns the path of the last checkpoint."""
    seed_run(cfg.seed)
    trainer = build_trainer(cfg, monitor="val/loss")  # first: it resolves channels_last=auto
    system = AutoencoderSystem(model=plain(cfg.autoencoder.model), optim=plain(cfg.autoencoder.optim), data=plain(cfg.dataset))
    return fit(cfg, system.to(memory_format=torch.channels_last) if cfg.channels_last else system, trainer, cfg.autoencoder.batch_size)


@hydra.main(config_path="configs", config_name="train_autoencoder", version_base="1.3")
@exit_on_user_error
def main(cfg: DictConfig) -> float | None:
    print_config_tree(cfg)
    return train_and_report(train, cfg, objective="val/loss")  # what a sweeper minimises


if __name__ == "__main__":
    run_entry_point(main, Path(__file__).parent / "configs")
