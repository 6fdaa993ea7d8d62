"""Optional FID/KID of EMA samples during training, against a reference (main/evaluation/fid.py's Scorer), logged like every other metric.

Cost per evaluation: generating ``n_samples`` (`ImageSampler`, with the system's preview settings) plus Inception at 299x299 on each of
them, measured 0.37 s per image plus 12 s fixed on one busy CPU thread (milliseconds per image on a GPU); the reference's
features are computed at the first evaluation and then read from the cache. The samples come from the same seeds every
time, so successive values compare weights, not noise, and the training's own random stream is untouched (tested: the
same weights as a run without the callback).

Rank 0 generates and scores while the other ranks wait in the broadcast of the result; an evaluation must fit in the
process group's timeout (30 minutes by default).
"""

from __future__ import annotations

import time

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info

from main.callbacks import ImageSampler
from main.evaluation.common import batch_generator, in_batches
from main.evaluation.fid import DEFAULT_CACHE, Scorer, load_reference, parse_metrics
from main.utils.errors import UserError


class FIDMetrics(pl.Callback):
    def __init__(
        self,
        dataset: dict,
        every_n_steps: int = 0,
        every_n_epochs: int = 0,
        n_samples: int = 1000,
        batch_size: int = 100,
        reference: str | None = None,
        weights: str | None = None,
        metrics: list[str] | str = ("fid", "kid"),
        cache: str | None = None,
        seed: int = 0,
    ):
        """dataset: the run's data set config (reference None = its val split)."""
        if n_samples < 2 or batch_size < 1:
            raise UserError(f"fid.n_samples={n_samples}, fid.batch_size={batch_size}: FID needs at least 2 samples, batches of 1 or more")
        self.dataset, self.every_n_steps, self.every_n_epochs = dataset, every_n_steps, every_n_epochs
        self.n_samples, self.batch_size, self.seed = n_samples, batch_size, seed
        self.reference = reference or f"{dataset['name']}-val"
        self.weights, self.metrics, self.cache = weights, parse_metrics(metrics, "fid.metrics"), cache or DEFAULT_CACHE
        self.scorer: Scorer | None = None
        self._last_step = -1

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Check the weights and the reference before training starts (rank 0), so a mistake stops every rank at once."""
        if stage != "fit":
            return
        problem = None
        if trainer.is_global_zero:
            try:
                self.scorer = self._build_scorer()
            except UserError as err:
                problem = str(err)
        problem = trainer.strategy.broadcast(problem, src=0)
        if problem:
            raise UserError(problem)

    def _build_scorer(self) -> Scorer:
        reference, name = load_reference(self.reference, dataset_cfg=self.dataset)
        if reference.channels != self.dataset["channels"]:
            raise UserError(
                f"fid.reference '{self.reference}' has {reference.channels}-channel images but the model makes "
                f"{self.dataset['channels']}-channel ones: use a reference of the training data set"
            )
        return Scorer(reference, name, self.metrics, self.weights, self.cache)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int) -> None:
        step = trainer.global_step
        if self.every_n_steps and step and step % self.every_n_steps == 0:
            self._evaluate(trainer, pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.every_n_epochs and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self._evaluate(trainer, pl_module)

    def _evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        step = trainer.global_step
        if step == self._last_step:  # skipped updates, or an epoch ending on a step already scored
            return
        self._last_step = step
        metrics = self._score(pl_module, step) if trainer.is_global_zero else None
        metrics = trainer.strategy.broadcast(metrics, src=0)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)

    @torch.no_grad()
    def _score(self, pl_module: ImageSampler | pl.LightningModule, step: int) -> dict[str, float]:
        start = time.perf_counter()
        was_training = pl_module.training
        pl_module.eval()
        device = pl_module.device
        images = torch.cat(
            [
                pl_module.sample_images(count, batch_generator(self.seed, first, device)).cpu()
                for first, count in in_batches(self.n_samples, self.batch_size)
            ]
        )
        pl_module.train(was_training)
        sampled = time.perf_counter()
        metrics = self.scorer(images, cuda=device.type == "cuda")
        logged = {key: value for key, value in metrics.items() if isinstance(value, float)}
        shown = ", ".join(f"{key} {value:.4g}" for key, value in logged.items())
        rank_zero_info(
            f"step {step}: {shown} ({self.n_samples} samples in {sampled - start:.1f} s, scored in {time.perf_counter() - sampled:.1f} s)"
        )
        return logged
