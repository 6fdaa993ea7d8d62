"""CIFAR-10 from either of the two layouts users have, detected from what is in `dataset.root`.

(a) torchvision's `cifar-10-batches-py/` (data_batch_1..5, test_batch), under `root` or as
    `root` itself. We read these pickles ourselves instead of through
    `torchvision.datasets.CIFAR10`: torchvision refuses any file whose md5 differs from the
    official archive (so re-packed or test copies fail with "Dataset not found or corrupted")
    and unpickles with the unrestricted `pickle.load`. Our unpickler only admits the few
    numpy globals a batch needs, so a malicious file cannot run code. With
    `dataset.download=true` torchvision still downloads and md5-checks the official archive.
(b) `cifar10_train*.npz` + `cifar10_test*.npz` (arrays `images` NHWC uint8, `labels`), as in
    the shared offline copy; train = train files concatenated in sorted name order.

Splits: test = the official 10000 test images; val = `val_size` (5000) train images chosen by
a fixed-seed permutation; train = the remaining 45000.
"""

from __future__ import annotations

import codecs
import io
import pickle
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch.utils.data import Dataset, Subset

from main.datasets.common import (
    ArrayDataset,
    check_images,
    check_labels,
    fixed_split,
    rgb_side,
    split_count,
)
from main.datasets.config import DatasetConfig
from main.datasets.npz import load_npz_images
from main.utils.errors import UserError

TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"

# numpy's array-unpickling helper, taken from a pickle so we need not know its module.
_RECONSTRUCT = np.zeros(0).__reduce__()[0]
# The only globals a batch pickle names (numpy < 2 spells `numpy.core`; `_codecs.encode`
# appears when Python 3 writes bytes with pickle protocol 2).
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,
}


class _BatchUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED_GLOBALS[module, name]
        except KeyError:
            raise pickle.UnpicklingError(f"unexpected object {module}.{name}") from None


def read_batch(path: Path) -> tuple[np.ndarray, list[int]]:
    """`data` (N, 3072) uint8 and `labels` of one python-format CIFAR batch file."""
    try:
        entry = _BatchUnpickler(io.BytesIO(path.read_bytes()), encoding="latin1").load()
        data, labels = entry["data"], entry["labels"]
        if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2):
            raise ValueError("'data' is not a uint8 (N, 3072) array")
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError, OSError) as err:
        raise UserError(
            f"'{path}' is not a CIFAR-10 python batch ({err}): re-extract cifar-10-python.tar.gz or set dataset.download=true"
        ) from None
    return data, labels


def _batches_dir(root: Path) -> Path | None:
    for candidate in (root / "cifar-10-batches-py", root):
        if (candidate / TRAIN_BATCHES[0]).is_file():
            return candidate
    return None


class Cifar10Source:
    def __init__(self, cfg: DatasetConfig):
        self.cfg = cfg
        if cfg.download and cfg.root is not None:
            Path(cfg.root).expanduser().mkdir(parents=True, exist_ok=True)
        root = cfg.existing_root(can_download=True)
        self.batches = _batches_dir(root)
        self.npz = {s: sorted(root.glob(f"cifar10_{s}*.npz")) for s in ("train", "test")}
        if self.batches is None and not all(self.npz.values()):
            if not cfg.download:
                raise UserError(
                    f"no CIFAR-10 files in '{root}' (expected cifar-10-batches-py/ or "
                    "cifar10_train*.npz and cifar10_test*.npz): set dataset.download=true "
                    "or point dataset.root at them"
                )
            self.batches = self._download(root)
        self._loaded: dict[bool, ArrayDataset] = {}

    @staticmethod
    def _download(root: Path) -> Path:
        try:
            torchvision.datasets.CIFAR10(str(root), train=False, download=True)
        except (OSError, RuntimeError) as err:
            raise UserError(
                f"downloading CIFAR-10 to '{root}' failed ({err}): check the network or download cifar-10-python.tar.gz by hand"
            ) from None
        return root / "cifar-10-batches-py"

    def _official(self, train: bool) -> ArrayDataset:
        if train not in self._loaded:
            self._loaded[train] = self._load(train)
        return self._loaded[train]

    def _load(self, train: bool) -> ArrayDataset:
        if self.batches is None:
            return load_npz_images(self.npz["train" if train else "test"], self.cfg)
        data, labels = [], []
        for name in TRAIN_BATCHES if train else (TEST_BATCH,):
            path = self.batches / name
            if not path.is_file():
                raise UserError(f"'{self.batches}' has no {name}: re-extract cifar-10-python.tar.gz or set dataset.download=true")
            batch_data, batch_labels = read_batch(path)
            data.append(batch_data)
            labels.extend(batch_labels)
        rows = np.concatenate(data)
        size = rgb_side(rows.shape[1], str(self.batches))
        images = torch.from_numpy(rows.reshape(len(rows), 3, size, size))
        check_images(tuple(images.shape), self.cfg, str(self.batches))
        return ArrayDataset(images, check_labels(np.array(labels), len(images), self.cfg, str(self.batches)))

    def split(self, name: str) -> Dataset:
        if name == "test":
            return self._official(train=False)
        train = self._official(train=True)
        val = split_count(self.cfg.val_size, len(train), "val_size")
        return Subset(train, fixed_split(len(train), val=val, test=0)[name].tolist())
