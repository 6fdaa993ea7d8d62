"""At the end of training, plot the run's curves (main/evaluation/plots.py) to run_dir/plots/training_curves.png and the image loggers.

The plot reads the run's CSV log: every version under it, so a resumed run shows its whole history (build_trainer keeps a
CSV log beside TensorBoard or wandb for this).
"""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn
from torchvision.io import ImageReadMode, read_image

from main.callbacks import log_image
from main.evaluation.plots import plot_training_curves
from main.utils.errors import UserError


def csv_log_files(logger: CSVLogger) -> list[Path]:
    """metrics.csv of every version of the logger's run, oldest first."""
    versions = [d for d in Path(logger.root_dir).glob("version_*") if d.name.removeprefix("version_").isdigit()]
    ordered = sorted(versions, key=lambda d: int(d.name.removeprefix("version_")))
    return [d / "metrics.csv" for d in ordered if (d / "metrics.csv").is_file()]


class TrainingCurves(pl.Callback):
    def __init__(self, out_png: str | Path):
        self.out_png = Path(out_png)

    @rank_zero_only
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        logger = next((lg for lg in trainer.loggers if isinstance(lg, CSVLogger)), None)
        if logger is None:
            rank_zero_warn("no training curves: the run has no CSV logger")
            return
        logger.save()  # flush the rows still in memory
        try:
            path = plot_training_curves(csv_log_files(logger), self.out_png)
        except UserError as err:  # e.g. a run shorter than log_every_n_steps with no validation: nothing to draw
            rank_zero_warn(f"no training curves: {err}")
            return
        log_image(trainer, "training_curves", read_image(str(path), ImageReadMode.RGB), trainer.global_step)
