"""Training callbacks: sample grids, FID/KID, training curves, timing; and sending an image to the loggers that show images."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger


def log_image(trainer: pl.Trainer, key: str, image: torch.Tensor, step: int) -> None:
    """An image [C, H, W] (float in [0, 1] or uint8) to TensorBoard and wandb; other loggers keep no images."""
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(key, image, step)
        elif isinstance(logger, WandbLogger):
            logger.log_image(key, [image], step=step)
