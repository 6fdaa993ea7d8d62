"""Pieces shared by the loaders: fixed splits, in-memory image arrays, shape/label checks, flips."""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler

from main.datasets.config import DatasetConfig
from main.utils.errors import UserError

SPLITS = ("train", "val", "test")

# Held-out images are chosen with this seed, never with the training seed, so that runs with
# different seeds evaluate on the same images.
SPLIT_SEED = 20240917


class SplitSource(Protocol):
    """What each format module provides: the un-augmented dataset of one split, built on demand."""

    def split(self, name: str) -> Dataset: ...


def split_count(size: float, total: int, key: str) -> int:
    """Turn a `val_size`/`test_size` value (count or fraction) into a count for `total` images."""
    if isinstance(size, bool) or not isinstance(size, (int, float)) or size < 0:
        raise UserError(f"dataset.{key}={size!r} is not valid: use a count (int) or a fraction in (0, 1)")
    if isinstance(size, float):
        if size >= 1:
            raise UserError(f"dataset.{key}={size} is not a fraction: use a value in (0, 1) or an int count")
        return round(size * total)
    return size


def fixed_split(total: int, val: int, test: int) -> dict[str, np.ndarray]:
    """Sorted indices of train/val/test; val and test are drawn by a permutation with `SPLIT_SEED`."""
    if val + test >= total:
        raise UserError(
            f"held-out splits of {val} (val) + {test} (test) images leave no training images out of {total}: "
            "lower dataset.val_size/dataset.test_size"
        )
    perm = np.random.default_rng(SPLIT_SEED).permutation(total)
    parts = {"test": perm[:test], "val": perm[test : test + val], "train": perm[test + val :]}
    return {name: np.sort(idx) for name, idx in parts.items()}


def check_images(shape: tuple[int, ...], cfg: DatasetConfig, source: str) -> None:
    """Compare an NCHW array shape with the configured image size and channel count."""
    _, c, h, w = shape
    if h != w:
        raise UserError(f"{source}: images are {h}x{w}, not square: crop them to squares first")
    if h != cfg.image_size:
        raise UserError(f"{source}: images are {h}x{w} but dataset.image_size={cfg.image_size}: set dataset.image_size={h}")
    if c != cfg.channels:
        # only 1 and 3 channels are models' inputs: other counts (RGBA, gray + alpha) are converted, not configured
        fix = f"set dataset.channels={c}" if c in (1, 3) else "save them as RGB or grayscale, e.g. without alpha: images[..., :3]"
        raise UserError(f"{source}: images have {c} channel(s) but dataset.channels={cfg.channels}: {fix}")


def rgb_side(row_length: int, source: str) -> int:
    """Side S of square RGB images stored as flattened rows of 3 * S * S values."""
    side = math.isqrt(row_length // 3)
    if 3 * side * side != row_length:
        raise UserError(f"{source}: rows of {row_length} values are not flattened 3xSxS RGB images: use the data set's official files")
    return side


def check_labels(labels: np.ndarray | None, count: int, cfg: DatasetConfig, source: str) -> torch.Tensor:
    """Return int64 labels in [0, num_classes), or all -1 when the data set is configured without classes."""
    if cfg.num_classes == 0:
        return torch.full((count,), -1, dtype=torch.int64)
    if labels is None:
        raise UserError(f"{source} has no labels but dataset.num_classes={cfg.num_classes}: set dataset.num_classes=0")
    labels = np.asarray(labels).reshape(-1)
    if len(labels) != count or not np.issubdtype(labels.dtype, np.integer):
        raise UserError(f"{source}: expected {count} integer labels, got {len(labels)} of type {labels.dtype}: fix the label array")
    low, high = int(labels.min(initial=0)), int(labels.max(initial=0))
    if low < 0:
        raise UserError(f"{source}: found label {low}: labels must be class indices 0..num_classes-1")
    if high >= cfg.num_classes:
        raise UserError(f"{source}: labels go up to {high} but dataset.num_classes={cfg.num_classes}: set dataset.num_classes={high + 1}")
    return torch.from_numpy(labels.astype(np.int64))


def to_nchw(images: np.ndarray, source: str) -> torch.Tensor:
    """Convert uint8 images stored as (N, H, W) or (N, H, W, C) to a contiguous NCHW tensor."""
    if images.dtype != np.uint8:
        raise UserError(f"{source}: images have dtype {images.dtype}, not uint8: store pixel values 0..255 as uint8")
    if images.ndim == 3:
        images = images[:, :, :, None]
    if images.ndim != 4:
        raise UserError(f"{source}: images have shape {images.shape}: expected (N, H, W) or (N, H, W, C)")
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))


class ArrayDataset(Dataset):
    """Images held in memory as one uint8 NCHW tensor with an int64 label per image."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        assert images.dtype == torch.uint8 and images.ndim == 4 and len(labels) == len(images)
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])


class MirrorPairs(Dataset):
    """The split twice over: item i < n is image i, item n + i is image i mirrored horizontally.

    `EpochSampler(flip=True)` picks one of the two for each image, so flips are decided by the
    sampler's (seed, epoch) and neither by worker processes nor by the global RNG.
    """

    def __init__(self, dataset: Dataset):
        self.dataset = dataset
        self.n = len(dataset)

    def __len__(self) -> int:
        return 2 * self.n

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self.dataset[index % self.n]
        return (image.flip(-1) if index >= self.n else image), label


class EpochSampler(DistributedSampler):
    """This rank's share of the training split, in an order drawn from (seed, epoch).

    The epoch's order is one permutation of the whole split (padded by its first images to a multiple of
    the number of ranks), and rank r serves every world_size-th image of it from r on: batch k of W ranks
    with batch size B together hold the images of batch k of one process with batch size W * B. Being a
    DistributedSampler, it is used by Lightning as is (Lightning would wrap any other sampler in one that
    shuffles our order again). Lightning calls `set_epoch` at each epoch, so a resumed run sees exactly the
    order (and flips) the uninterrupted run would have seen; `resume_at` continues an epoch half-way.
    """

    def __init__(self, n: int, seed: int, flip: bool = False, rank: int = 0, world_size: int = 1):
        super().__init__(range(n), num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
        self.n, self.flip = n, flip
        self.offset = 0  # position in the epoch's order where the current iteration started
        self.resume_offset = 0  # where the next iteration starts (set by resume_at, consumed once)

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.resume_offset = 0
        self.epoch = epoch

    def resume_at(self, epoch: int, offset: int) -> None:
        """Serve epoch ``epoch`` from position ``offset`` of its order (the images all ranks had served)."""
        self.epoch, self.resume_offset = epoch, offset

    def position(self, served: int) -> dict[str, int]:
        """The (epoch, offset) to resume at once this rank has served ``served`` images of the current iteration."""
        offset = self.offset + served * self.num_replicas
        return {"epoch": self.epoch + 1, "offset": 0} if offset >= self.total_size else {"epoch": self.epoch, "offset": offset}

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.n, generator=generator)
        if self.flip:
            order += self.n * torch.randint(0, 2, (self.n,), generator=generator)
        order = (order.tolist() * math.ceil(self.total_size / self.n))[: self.total_size]
        self.offset, self.resume_offset = self.resume_offset, 0
        return iter(order[self.offset + self.rank :: self.num_replicas])
