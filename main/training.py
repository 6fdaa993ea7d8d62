"""The training loop both stages share: one Lightning Trainer with checkpoints, sample grids, timing, curves and optional FID.

A run directory holds one run: starting a new run over checkpoints is refused unless resuming.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import lightning.pytorch as pl
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities import rank_zero_info
from omegaconf import DictConfig

from main.callbacks.curves import TrainingCurves
from main.callbacks.fid_metrics import FIDMetrics
from main.callbacks.sample_grid import SampleGrid
from main.callbacks.train_timer import TrainTimer
from main.datasets import build_datamodule
from main.utils.checkpoint import AtomicCheckpointIO
from main.utils.config import plain
from main.utils.errors import UserError


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


def build_trainer(cfg: DictConfig, monitor: str, **sample_kwargs) -> pl.Trainer:
    """Trainer from cfg.trainer, keeping the best checkpoint by ``monitor`` and the last; sample_kwargs go to the grid and FID.

    cfg.fid (off by default) adds FID/KID of EMA samples; cfg.plots.training_curves plots the CSV log at the end, so a CSV
    log is kept beside TensorBoard or wandb.
    """
    run_dir = Path(cfg.run_dir)
    callbacks = [
        ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="best", monitor=monitor, mode="min", save_top_k=1, save_last=True),
        SampleGrid(run_dir / "samples", cfg.samples.every_n_steps, cfg.samples.n, cfg.seed, **sample_kwargs),
        TrainTimer(),
    ]
    fid = plain(cfg.fid)
    if fid["every_n_steps"] or fid["every_n_epochs"]:
        callbacks.append(FIDMetrics(plain(cfg.dataset), seed=cfg.seed, **fid, **sample_kwargs))
    loggers = [instantiate(cfg.logger)]
    if cfg.plots.training_curves:
        callbacks.append(TrainingCurves(run_dir / "plots" / "training_curves.png"))
        if not isinstance(loggers[0], CSVLogger):
            loggers.append(CSVLogger(run_dir, name="csv_logs"))
    return pl.Trainer(**plain(cfg.trainer), callbacks=callbacks, logger=loggers, default_root_dir=run_dir, plugins=[AtomicCheckpointIO()])


def fit(cfg: DictConfig, system: pl.LightningModule, trainer: pl.Trainer, batch_size: int, datamodule=None) -> Path:
    """Train (or resume) ``system`` on cfg.dataset (or on ``datamodule``, e.g. cached latents); returns the path of the last checkpoint."""
    checkpoint_dir = Path(cfg.run_dir) / "checkpoints"
    ckpt_path = resume_checkpoint(cfg.resume, checkpoint_dir)
    if datamodule is None:
        datamodule = build_datamodule(cfg.dataset, batch_size=batch_size, num_workers=cfg.num_workers, seed=cfg.seed)
    trainer.fit(system, datamodule=datamodule, ckpt_path=ckpt_path)
    last = checkpoint_dir / "last.ckpt"
    saved_step = getattr(trainer.checkpoint_callback, "_last_global_step_saved", -1)
    if trainer.global_step > max(saved_step, 0):  # updates after the last validation (max_steps or max_time mid-interval)
        trainer.save_checkpoint(last)
    return last


def train_and_report(train: Callable[[DictConfig], Path], cfg: DictConfig) -> None:
    """Run an entry point's train(cfg) and print how long it took and where the last checkpoint is."""
    start = time.perf_counter()
    last = train(cfg)
    rank_zero_info(f"trained in {time.perf_counter() - start:.0f} s; last checkpoint: {last}")
