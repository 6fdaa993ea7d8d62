"""scikit-learn digits: loading, conversion, fixed split."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from main.datasets import build_datamodule
from main.utils.errors import UserError


@pytest.fixture(scope="module")
def sklearn_digits():
    return load_digits()


def test_split_sizes_shapes_and_labels(config):
    dm = build_datamodule(config("digits"), batch_size=8)
    assert {s: len(dm.split(s)) for s in ("train", "val", "test")} == {"train": 1437, "val": 180, "test": 180}
    image, label = dm.split("val")[0]
    assert image.dtype == torch.uint8 and image.shape == (1, 8, 8)
    assert isinstance(label, int) and 0 <= label < 10


def test_pixels_are_rescaled_from_0_16_to_0_255(config, sklearn_digits):
    train = build_datamodule(config("digits"), batch_size=8).split("train")
    index = train.indices[5]
    image, label = train[5]
    expected = np.round(sklearn_digits.images[index] * 255 / 16).astype(np.uint8)
    assert np.array_equal(image[0].numpy(), expected)
    assert label == sklearn_digits.target[index]
    assert image.max() == 255 or expected.max() < 255


def test_splits_are_disjoint_cover_everything_and_ignore_the_seed(config):
    dm_a = build_datamodule(config("digits"), batch_size=8, seed=0)
    dm_b = build_datamodule(config("digits"), batch_size=8, seed=123)
    parts = {s: set(dm_a.split(s).indices) for s in ("train", "val", "test")}
    assert not parts["train"] & parts["val"] and not parts["train"] & parts["test"] and not parts["val"] & parts["test"]
    assert set.union(*parts.values()) == set(range(1797))
    for s in ("train", "val", "test"):
        assert dm_a.split(s).indices == dm_b.split(s).indices


def test_config_that_does_not_match_the_data_is_a_user_error(config):
    with pytest.raises(
        UserError,
        match=r"^digits: images are 8x8 but dataset.image_size=32: "
        r"set dataset.image_size=8$",
    ):
        build_datamodule(config("digits", image_size=32), batch_size=8).split("train")
    with pytest.raises(UserError, match=r"images have 1 channel\(s\) but dataset.channels=3: set dataset.channels=1"):
        build_datamodule(config("digits", channels=3), batch_size=8).split("train")
    with pytest.raises(UserError, match=r"labels go up to 9 but dataset.num_classes=5: set dataset.num_classes=10"):
        build_datamodule(config("digits", num_classes=5), batch_size=8).split("train")


def test_num_classes_zero_gives_label_minus_one(config):
    _, label = build_datamodule(config("digits", num_classes=0), batch_size=8).split("train")[0]
    assert label == -1
