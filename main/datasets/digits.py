"""scikit-learn's 8x8 handwritten digits (1797 images, 10 classes), shipped with the package.

Tiny and always available, so it is the smoke-test data set. Pixel values 0..16 become
uint8 via round(v * 255 / 16).
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch.utils.data import Dataset, Subset

from main.datasets.common import ArrayDataset, check_images, check_labels, fixed_split
from main.datasets.config import DatasetConfig

VAL_COUNT = 180
TEST_COUNT = 180


def digits_images() -> tuple[np.ndarray, np.ndarray]:
    """All 1797 images as uint8 (N, 1, 8, 8) and their labels, in scikit-learn's order."""
    bunch = load_digits()
    images = np.round(bunch.images * (255 / 16)).astype(np.uint8)[:, None]
    return images, bunch.target


class DigitsSource:
    def __init__(self, cfg: DatasetConfig):
        self.cfg = cfg

    @functools.cached_property
    def _all(self) -> ArrayDataset:
        images, labels = digits_images()
        check_images(images.shape, self.cfg, "digits")
        return ArrayDataset(torch.from_numpy(images), check_labels(labels, len(images), self.cfg, "digits"))

    def split(self, name: str) -> Dataset:
        indices = fixed_split(len(self._all), val=VAL_COUNT, test=TEST_COUNT)[name]
        return Subset(self._all, indices.tolist())
