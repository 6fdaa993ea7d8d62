"""Training progress in optimizer updates, the budget runs are given in (trainer.max_steps, trainer.max_time).

Lightning's bar counts the batches of each epoch and, as runs here set no max_epochs, reads "Epoch 44/-2".
"""

from __future__ import annotations

from datetime import timedelta

import lightning.pytorch as pl
from lightning.pytorch.callbacks import RichProgressBar, Timer


class StepProgressBar(RichProgressBar):
    """With trainer.max_steps: one training bar over the whole run, updates done of max_steps; without, Lightning's
    bar per epoch. Its description names the epoch and, with trainer.max_time, the time used of that budget."""

    @property
    def total_train_batches(self) -> int | float:
        return self.trainer.max_steps if self.trainer.max_steps > 0 else super().total_train_batches

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.train_progress_bar_id is None or trainer.max_steps <= 0:  # the step bar is made once, not reset per epoch
            super().on_train_epoch_start(trainer, pl_module)
        self._show_progress(trainer)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int) -> None:
        if trainer.max_steps <= 0:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        else:
            if not self.is_disabled and self.train_progress_bar_id is None:  # resumed mid-epoch
                self._initialize_train_progress_bar_id()
            self._update_metrics(trainer, pl_module)
        self._show_progress(trainer)

    def _show_progress(self, trainer: pl.Trainer) -> None:
        if self.progress is None or self.train_progress_bar_id is None:
            return
        steps = {"completed": trainer.global_step} if trainer.max_steps > 0 else {}
        self.progress.update(self.train_progress_bar_id, description=self._get_train_description(trainer.current_epoch), **steps)
        self.refresh()

    def _get_train_description(self, current_epoch: int) -> str:
        with_steps = self.trainer.max_steps > 0
        details = [f"epoch {current_epoch}"] if with_steps else []
        timer = next((callback for callback in self.trainer.callbacks if isinstance(callback, Timer)), None)  # max_time's
        if timer is not None and timer.time_remaining("train") is not None:
            used = timer.time_elapsed("train")
            details.append(f"{timedelta(seconds=round(used))} of {timedelta(seconds=round(used + timer.time_remaining('train')))}")
        head = "Steps" if with_steps else f"Epoch {current_epoch}"
        return f"{head} ({', '.join(details)})" if details else head
