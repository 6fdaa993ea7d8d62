"""Keep the total training time in the checkpoint, across resumes (results.json reports it)."""

from __future__ import annotations

import time

import lightning.pytorch as pl


class TrainTimer(pl.Callback):
    def __init__(self):
        self.seconds_before = 0.0
        self.started = time.perf_counter()

    @property
    def train_seconds(self) -> float:
        return self.seconds_before + time.perf_counter() - self.started

    def on_train_start(self, trainer, pl_module) -> None:
        self.started = time.perf_counter()

    def state_dict(self) -> dict:
        return {"train_seconds": self.train_seconds}

    def load_state_dict(self, state_dict: dict) -> None:
        self.seconds_before = float(state_dict["train_seconds"])
