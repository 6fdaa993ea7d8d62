"""Images stored in .npz archives: `images` uint8 (N, H, W) or (N, H, W, C), optional `labels`.

`dataset.root` is one .npz file or a folder of them (not searched recursively). If the folder
has files whose names contain `train` and `test`, those are the splits (plus files containing
`val`, if any, as the val split); otherwise all files are concatenated in name order and split
like `digits`, by a fixed-seed permutation, into `test_size`/`val_size` held-out images.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from main.datasets.common import (
    ArrayDataset,
    check_images,
    check_labels,
    fixed_split,
    split_count,
    to_nchw,
)
from main.datasets.config import DatasetConfig
from main.datasets.npzio import npz_keys, read_array
from main.utils.errors import UserError

log = logging.getLogger(__name__)


def load_npz_images(files: list[Path], cfg: DatasetConfig) -> ArrayDataset:
    """Concatenate `images` (and `labels`) of `files` in the given order, checked against `cfg`."""
    images, labels = [], []
    for path in files:
        array = read_array(path, "images")
        if array is None:
            raise UserError(
                f"'{path}' has no 'images' array (it has: {', '.join(npz_keys(path)) or 'nothing'}): "
                "save the images under the name 'images'"
            )
        tensor = to_nchw(array, str(path))
        check_images(tuple(tensor.shape), cfg, str(path))
        images.append(tensor)
        labels.append(check_labels(read_array(path, "labels"), len(tensor), cfg, str(path)))
    return ArrayDataset(torch.cat(images), torch.cat(labels))


class NpzSource:
    def __init__(self, cfg: DatasetConfig):
        self.cfg = cfg
        root = cfg.existing_root()
        files = [root] if root.is_file() else sorted(root.glob("*.npz"))
        if not files:
            raise UserError(f"no .npz files in '{root}': set dataset.root to an .npz file or a folder of them")
        named = {s: [f for f in files if s in f.stem.lower()] for s in ("train", "val", "test")}
        self.named = named if named["train"] and named["test"] else None
        if self.named:
            unused = set(files).difference(*named.values())
            if unused:
                log.warning("ignoring %d .npz file(s) without train/val/test in the name, e.g. %s", len(unused), min(unused).name)
        self.files = files
        self._loaded: dict[tuple[Path, ...], ArrayDataset] = {}

    def _load(self, split_files: tuple[Path, ...]) -> ArrayDataset:
        if split_files not in self._loaded:
            self._loaded[split_files] = load_npz_images(list(split_files), self.cfg)
        return self._loaded[split_files]

    def split(self, name: str) -> Dataset:
        if self.named is None:
            pool = self._load(tuple(self.files))
            return Subset(pool, self._held_out(len(pool), test=True)[name].tolist())
        if name == "test" or self.named["val"]:
            return self._load(tuple(self.named[name]))
        pool = self._load(tuple(self.named["train"]))
        return Subset(pool, self._held_out(len(pool), test=False)[name].tolist())

    def _held_out(self, total: int, test: bool) -> dict[str, np.ndarray]:
        """Indices of the splits drawn from `total` images; refused when a held-out split would be empty (evaluation needs it)."""
        val = split_count(self.cfg.val_size, total, "val_size")
        splits = fixed_split(total, val=val, test=split_count(self.cfg.test_size, total, "test_size") if test else 0)
        held_out = ("val", "test") if test else ("val",)
        if empty := [name for name in held_out if len(splits[name]) == 0]:
            sizes = ", ".join(f"{len(splits[name])} {name}" for name in ("train", *held_out))
            fix = " ".join(f"dataset.{name}_size=1" for name in empty)
            raise UserError(f"'{self.cfg.root}' has {total} images, split into {sizes}: set {fix} (a count of images) or add images")
        return splits
