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
import time
from pathlib import Path

import hydra
import lightning.pytorch as pl
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info
from omegaconf import DictConfig

from main.callbacks.sample_grid import SampleGrid
from main.callbacks.train_timer import TrainTimer
from main.datasets import build_datamodule
from main.systems.stage_one import StageOneSystem
from main.utils.config import plain
from main.utils.errors import UserError, exit_on_user_error


def resume_checkpoint(resume: bool | str, checkpoint_dir: Path) -> str | None:
    """The checkpoint to continue from, refusing to start a new run over an old one."""
    if resume is True:
        last = checkpoint_dir / "last.ckpt"
        if not last.is_file():
            raise UserError(f"resume=true but '{last}' does not exist: start without resume, or pass resume=<checkpoint path>")
        return str(last)
    if resume:
        if not Path(resume).is_file():
            raise UserError(f"resume checkpoint '{resume}' does not exist: pass the path of a .ckpt file")
        return str(resume)
    if checkpoint_dir.is_dir() and any(checkpoint_dir.glob("*.ckpt")):
        raise UserError(
            f"'{checkpoint_dir}' already holds checkpoints: pass resume=true to continue that run, or name=<new name> to start another"
        )
    return None


def build_system(cfg: DictConfig) -> StageOneSystem:
    system = StageOneSystem(
        model=plain(cfg.vae.model), optim=plain(cfg.vae.optim), data=plain(cfg.dataset), label_dropout=cfg.vae.label_dropout
    )
    return system.to(memory_format=torch.channels_last) if cfg.channels_last else system


def build_trainer(cfg: DictConfig) -> pl.Trainer:
    run_dir = Path(cfg.run_dir)
    callbacks = [
        ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="best", monitor="val/bpd", mode="min", save_top_k=1, save_last=True),
        SampleGrid(run_dir / "samples", cfg.samples.every_n_steps, cfg.samples.n, cfg.samples.temperature, cfg.seed),
        TrainTimer(),
    ]
    return pl.Trainer(**plain(cfg.trainer), callbacks=callbacks, logger=instantiate(cfg.logger), default_root_dir=run_dir)


def train(cfg: DictConfig) -> Path:
    """Fit stage one; returns the path of the last checkpoint."""
    pl.seed_everything(cfg.seed, workers=True)
    checkpoint_dir = Path(cfg.run_dir) / "checkpoints"
    ckpt_path = resume_checkpoint(cfg.resume, checkpoint_dir)
    datamodule = build_datamodule(cfg.dataset, batch_size=cfg.vae.batch_size, num_workers=cfg.num_workers, seed=cfg.seed)
    build_trainer(cfg).fit(build_system(cfg), datamodule=datamodule, ckpt_path=ckpt_path)
    return checkpoint_dir / "last.ckpt"


@hydra.main(config_path="configs", config_name="train_ae", version_base="1.3")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    start = time.perf_counter()
    last = train(cfg)
    rank_zero_info(f"trained in {time.perf_counter() - start:.0f} s; last checkpoint: {last}")


if __name__ == "__main__":
    main()
