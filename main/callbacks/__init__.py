"""Training callbacks: sample grids, FID/KID, training curves, timing; and sending an image to the loggers that show images.

The grid and FID callbacks know a system only through `ImageSampler` (and, for a grid laid out in rows, `GridPreview`):
the system draws with the preview settings it carries, so callbacks import no system class.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger


@runtime_checkable
class ImageSampler(Protocol):
    def sample_images(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """n uint8 images [n, C, H, W] from the EMA weights with the system's preview settings (a refiner: refined ones)."""


@runtime_checkable
class GridPreview(Protocol):
    def preview_grid(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, int]:
        """(uint8 images, images per row) for a grid in rows, e.g. stage-one samples above their refinements."""


def log_image(trainer: pl.Trainer, key: str, image: torch.Tensor, step: int) -> None:
    """An image [C, H, W] (float in [0, 1] or uint8) to TensorBoard and wandb; other loggers keep no images."""
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(key, image, step)
        elif isinstance(logger, WandbLogger):
            logger.log_image(key, [image], step=step)
