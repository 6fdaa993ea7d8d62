"""The training progress bar counts optimizer updates against trainer.max_steps and shows the time budget."""

from __future__ import annotations

import re

import lightning.pytorch as pl
from helpers import tiny_train_config

from main.train_ae import build_system, build_trainer
from main.training import fit


class BarRecorder(pl.Callback):
    """What the training bar shows after each batch; stops the run after ``stop_after`` batches if given."""

    def __init__(self, stop_after: int | None = None):
        self.shown, self.stop_after = [], stop_after

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        bar = trainer.progress_bar_callback
        task = next(task for task in bar.progress.tasks if task.id == bar.train_progress_bar_id)
        self.shown.append((task.description, task.completed, task.total, trainer.global_step))
        if self.stop_after is not None and len(self.shown) >= self.stop_after:
            trainer.should_stop = True


def train_recording(tmp_path, *overrides, stop_after=None) -> list[tuple]:
    cfg = tiny_train_config(tmp_path, "trainer.enable_progress_bar=true", "trainer.max_time=00:00:10:00", *overrides)
    trainer, recorder = build_trainer(cfg), BarRecorder(stop_after)
    trainer.callbacks.append(recorder)
    fit(cfg, build_system(cfg), trainer, cfg.vae.batch_size)
    return recorder.shown


def test_the_bar_counts_updates_of_max_steps_across_epochs(tmp_path):
    shown = train_recording(tmp_path, "vae.batch_size=256", "trainer.max_steps=8", "trainer.val_check_interval=8")  # 6 batches an epoch
    assert [(completed, total) for _, completed, total, _ in shown] == [(step, 8) for step in range(1, 9)]
    assert all(re.fullmatch(r"Steps \(epoch [01], 0:00:\d\d of 0:10:00\)", description) for description, *_ in shown)
    assert shown[-1][0].startswith("Steps (epoch 1")


def test_without_max_steps_the_bar_names_the_epoch_and_the_time_budget(tmp_path):
    shown = train_recording(tmp_path, "trainer.max_steps=-1", stop_after=2)
    assert re.fullmatch(r"Epoch 0 \(0:00:\d\d of 0:10:00\)", shown[-1][0])  # not "Epoch 0/-2"
