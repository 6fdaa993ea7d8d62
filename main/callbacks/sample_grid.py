"""Write a grid of samples every N training steps, to disk and to the run's loggers.

The system draws the images with its own preview settings: a `GridPreview` lays them out in rows (stage-one samples
above their refinements, images above their reconstructions), any other `ImageSampler` gives a square grid of samples.
The noise is the same every time, so grids are comparable.
"""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_only
from torchvision.utils import save_image

from main.callbacks import GridPreview, ImageSampler, log_image
from main.utils.errors import UserError
from main.utils.image_io import grid_image


class SampleGrid(pl.Callback):
    def __init__(self, out_dir: str | Path, every_n_steps: int, n: int = 64, seed: int = 0):
        """every_n_steps and n are the run's samples.every_n_steps and samples.n."""
        if every_n_steps and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise UserError(f"samples.n={n} is not valid: use a positive number of images, or samples.every_n_steps=0 for no grids")
        self.out_dir = Path(out_dir)
        self.every_n_steps = every_n_steps
        self.n = n
        self.seed = seed
        self._last: int | None = None  # a skipped update leaves global_step as it was: draw each step once

    @rank_zero_only
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int) -> None:
        step = trainer.global_step
        if not self.every_n_steps or step == 0 or step % self.every_n_steps or self._last == step:
            return
        self._last = step
        generator = torch.Generator(device=pl_module.device).manual_seed(self.seed)
        was_training = pl_module.training
        pl_module.eval()
        images, per_row = grid_images(pl_module, self.n, generator)
        pl_module.train(was_training)
        grid = grid_image(images, per_row)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        save_image(grid, self.out_dir / f"step_{step:07d}.png")
        log_image(trainer, "samples", grid, step)


def grid_images(system: GridPreview | ImageSampler, n: int, generator: torch.Generator) -> tuple[torch.Tensor, int]:
    """(uint8 images, images per row): the system's own layout, or n samples in a square."""
    if isinstance(system, GridPreview):
        return system.preview_grid(n, generator)
    return system.sample_images(n, generator), int(n**0.5)
