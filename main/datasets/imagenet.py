"""Downsampled ImageNet (32x32 or 64x64) in the official npz batches.

Files (searched anywhere under `dataset.root`, e.g. in `Imagenet32_train_npz/`):
`train_data_batch_1.npz` .. `train_data_batch_10.npz` and `val_data.npz`, each with `data`
uint8 (N, 3*S*S) holding CHW-flattened images and `labels` 1..1000.

Splits (as in VDVAE): test = `val_data.npz` (50000 images); val = `val_size` (10000) train
images chosen by a fixed-seed permutation; train = the rest of the 1281167 train images.
Labels become 0-based. Uncompressed archives are memory-mapped, so only touched images are read.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from main.datasets.common import (
    check_images,
    check_labels,
    fixed_split,
    rgb_side,
    split_count,
)
from main.datasets.config import DatasetConfig
from main.datasets.npzio import read_array
from main.utils.errors import UserError

log = logging.getLogger(__name__)

_TRAIN_FILE = re.compile(r"train_data_batch_(\d+)\.npz")


def train_batch_files(root: Path) -> list[Path]:
    """The train batches under `root`, in numeric order (1, 2, ..., 10, not 1, 10, 2)."""
    found = [p for p in root.rglob("train_data_batch_*.npz") if _TRAIN_FILE.fullmatch(p.name)]
    return sorted(found, key=lambda p: int(_TRAIN_FILE.fullmatch(p.name).group(1)))


class RowsDataset(Dataset):
    """Images stored as flattened CHW rows across several (memory-mapped) arrays."""

    def __init__(self, chunks: list[np.ndarray], labels: torch.Tensor, channels: int, size: int):
        self.chunks, self.labels, self.shape = chunks, labels, (channels, size, size)
        self.ends = np.cumsum([len(c) for c in chunks])

    def __len__(self) -> int:
        return int(self.ends[-1])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        chunk = int(np.searchsorted(self.ends, index, side="right"))
        start = self.ends[chunk - 1] if chunk else 0
        row = np.array(self.chunks[chunk][index - start])  # copy out of the read-only map
        return torch.from_numpy(row.reshape(self.shape)), int(self.labels[index])


class ImageNetSource:
    def __init__(self, cfg: DatasetConfig):
        self.cfg = cfg
        root = cfg.existing_root()
        self.train_files = train_batch_files(root)
        self.test_files = sorted(root.rglob("val_data.npz"))[:1]
        if not self.train_files or not self.test_files:
            raise UserError(
                f"no downsampled-ImageNet batches in '{root}' (need train_data_batch_<k>.npz and "
                "val_data.npz): set dataset.root to the folder holding them"
            )
        self._loaded: dict[str, RowsDataset] = {}

    def _rows(self, part: str) -> RowsDataset:
        if part not in self._loaded:
            self._loaded[part] = self._load(self.train_files if part == "train" else self.test_files)
        return self._loaded[part]

    def _load(self, files: list[Path]) -> RowsDataset:
        chunks, labels = [], []
        for path in files:
            data = read_array(path, "data", mmap=True)
            if data is None or data.ndim != 2 or data.dtype != np.uint8:
                raise UserError(f"'{path}' has no uint8 (N, 3*S*S) 'data' array: use the official downsampled-ImageNet npz files")
            if not isinstance(data, np.memmap):
                log.warning("'%s' is compressed, so it is read into memory; re-save it with np.savez to memory-map it", path)
            size = rgb_side(data.shape[1], str(path))
            check_images((len(data), 3, size, size), self.cfg, str(path))
            file_labels = read_array(path, "labels")
            one_based = None if file_labels is None else np.asarray(file_labels).reshape(-1) - 1
            labels.append(check_labels(one_based, len(data), self.cfg, str(path)))
            chunks.append(data)
        return RowsDataset(chunks, torch.cat(labels), self.cfg.channels, self.cfg.image_size)

    def split(self, name: str) -> Dataset:
        if name == "test":
            return self._rows("test")
        train = self._rows("train")
        val = split_count(self.cfg.val_size, len(train), "val_size")
        return Subset(train, fixed_split(len(train), val=val, test=0)[name].tolist())
