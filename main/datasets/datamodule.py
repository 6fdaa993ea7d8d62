"""The LightningDataModule every data set is served through, and the config-driven factory."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset

from main.datasets.cifar10 import Cifar10Source
from main.datasets.common import SPLITS, EpochSampler, MirrorPairs, SplitSource
from main.datasets.config import DatasetConfig
from main.datasets.digits import DigitsSource
from main.datasets.folder import FolderSource
from main.datasets.imagenet import ImageNetSource
from main.datasets.npz import NpzSource
from main.utils.errors import UserError

SOURCES: dict[str, type[SplitSource]] = {
    "digits": DigitsSource,
    "cifar10": Cifar10Source,
    "imagenet": ImageNetSource,
    "npz": NpzSource,
    "folder": FolderSource,
}

_STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}


class ResumableLoader(DataLoader):
    """The training loader, with the `state_dict` / `load_state_dict` Lightning saves in checkpoints.

    The state is where the epoch's order continues (epoch, images served by all ranks), counted from the
    batches this loader has handed out, not from what worker processes have prefetched. A run resumed
    mid-epoch so continues the epoch instead of starting it again.
    """

    batches_served = 0

    def __iter__(self):
        self.batches_served = 0
        for batch in super().__iter__():
            self.batches_served += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        if not isinstance(self.sampler, EpochSampler):  # Lightning's overfit_batches serves the first batches in order
            return {}
        return self.sampler.position(self.batches_served * self.batch_size)

    def load_state_dict(self, state: dict[str, int]) -> None:
        if isinstance(self.sampler, EpochSampler) and state:
            self.sampler.resume_at(state["epoch"], state["offset"])


class ImageDataModule(pl.LightningDataModule):
    """Serves (uint8 [C, H, W] image, int label or -1) pairs of the train/val/test splits.

    Splits are built on first use and cached; only the train split is flipped (if configured)
    and shuffled, by a generator seeded from `seed`, and split across the trainer's ranks.
    """

    def __init__(
        self,
        dataset_cfg: DatasetConfig | DictConfig | Mapping[str, Any],
        batch_size: int,
        num_workers: int = 0,
        seed: int = 0,
        eval_batch_size: int | None = None,
    ):
        super().__init__()
        for name, size in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size or batch_size)):
            if isinstance(size, bool) or not isinstance(size, int) or size < 1:
                raise UserError(f"{name}={size!r} is not valid: use a positive number of images per device")
        self.config = DatasetConfig.parse(dataset_cfg)
        self.image_size, self.channels, self.num_classes = (self.config.image_size, self.config.channels, self.config.num_classes)
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.num_workers, self.seed = num_workers, seed
        self.source = SOURCES[self.config.format](self.config)
        self._splits: dict[str, Dataset] = {}

    def split(self, name: str) -> Dataset:
        if name not in SPLITS:
            raise UserError(f"unknown split {name!r}: use {', '.join(SPLITS[:-1])} or {SPLITS[-1]}")
        if name not in self._splits:
            dataset = self.source.split(name)
            if len(dataset) == 0:  # caught here, not as an IndexError in evaluation or a run that never validates
                fix = "add images" if name == "train" else f"set dataset.{name}_size to at least 1 image or add images"
                raise UserError(f"the {name} split of '{self.config.name}' has no images: {fix}")
            self._splits[name] = MirrorPairs(dataset) if name == "train" and self.config.flip else dataset
        return self._splits[name]

    def setup(self, stage: str | None = None) -> None:
        for name in _STAGE_SPLITS.get(stage, SPLITS):
            self.split(name)

    def train_dataloader(self) -> DataLoader:
        train = self.split("train")
        n = train.n if isinstance(train, MirrorPairs) else len(train)
        rank, world_size = (self.trainer.global_rank, self.trainer.world_size) if self.trainer is not None else (0, 1)
        sampler = EpochSampler(n, self.seed, flip=self.config.flip, rank=rank, world_size=world_size)
        return self._loader("train", self.batch_size, sampler=sampler, loader=ResumableLoader)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_batch_size)

    def _loader(self, name: str, batch_size: int, sampler: EpochSampler | None = None, loader: type[DataLoader] = DataLoader) -> DataLoader:
        # Every loader gets its own generator (worker seeds), so iterating a loader never draws
        # from the global RNG the model uses.
        return loader(
            self.split(name),
            batch_size=batch_size,
            sampler=sampler,
            generator=torch.Generator().manual_seed(self.seed),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )


def build_datamodule(
    dataset_cfg: DictConfig | Mapping[str, Any], batch_size: int, num_workers: int = 0, seed: int = 0, eval_batch_size: int | None = None
) -> ImageDataModule:
    """Build the data module for a `configs/dataset/<name>.yaml` entry (dispatching on `format`/`name`)."""
    return ImageDataModule(dataset_cfg, batch_size, num_workers=num_workers, seed=seed, eval_batch_size=eval_batch_size)


def first_images(dataset_cfg: DictConfig | Mapping[str, Any], split: str, n: int | None, key: str = "n") -> tuple[torch.Tensor, ...]:
    """The first n images (all if None) of a split, the same ones every run: uint8 [N, C, H, W] and labels [N] (-1: none).
    ``key`` names the setting n came from in the error."""
    images = build_datamodule(dataset_cfg, batch_size=1).split(split)
    n = len(images) if n is None else int(n)
    if not 0 < n <= len(images):
        raise UserError(f"{key}={n} images asked from the {split} split, which has {len(images)}: ask for 1..{len(images)}")
    pairs = [images[i] for i in range(n)]
    return torch.stack([x for x, _ in pairs]), torch.tensor([int(label) for _, label in pairs])
