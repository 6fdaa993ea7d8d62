"""Write a grid of EMA samples every N training steps, to disk and to the run's loggers."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from torchvision.utils import make_grid, save_image


class SampleGrid(pl.Callback):
    def __init__(self, out_dir: str | Path, every_n_steps: int, n: int = 64, temperature: float = 1.0, seed: int = 0):
        self.out_dir = Path(out_dir)
        self.every_n_steps = every_n_steps
        self.n = n
        self.temperature = temperature
        self.seed = seed

    @rank_zero_only
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int) -> None:
        step = trainer.global_step
        if not self.every_n_steps or step == 0 or step % self.every_n_steps or getattr(self, "_last", None) == step:
            return
        self._last = step
        vae = pl_module.ema_vae
        generator = torch.Generator(device=pl_module.device).manual_seed(self.seed)  # same noise every time: comparable grids
        was_training = vae.training
        vae.eval()
        images = vae.to_uint8(vae.sample(self.n, temperature=self.temperature, generator=generator)).float() / 255
        vae.train(was_training)
        grid = make_grid(images.cpu(), nrow=int(self.n**0.5))
        self.out_dir.mkdir(parents=True, exist_ok=True)
        save_image(grid, self.out_dir / f"step_{step:07d}.png")
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image("samples", grid, step)
            elif isinstance(logger, WandbLogger):
                logger.log_image("samples", [grid], step=step)
