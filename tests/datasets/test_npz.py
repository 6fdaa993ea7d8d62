"""Generic .npz archives: single file, pooled folder, train/test-named files, and their errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from main.datasets import build_datamodule
from main.utils.errors import UserError


def marked(count: int, start: int = 0, shape=(6, 6)) -> np.ndarray:
    """uint8 images (N, *shape) whose first pixel holds the image's number."""
    images = np.zeros((count, *shape), np.uint8)
    images.reshape(count, -1)[:, 0] = np.arange(start, start + count)
    return images


def marks(dataset) -> list[int]:
    return [int(dataset[i][0][0, 0, 0]) for i in range(len(dataset))]


def npz_cfg(config, root: Path, **overrides):
    return config("npz", root=root, **{"image_size": 6, "channels": 1} | overrides)


def test_single_grayscale_file_is_split_by_fractions(config, tmp_path):
    np.savez(tmp_path / "digits.npz", images=marked(40), labels=np.arange(40) % 4)
    dm = build_datamodule(npz_cfg(config, tmp_path / "digits.npz", num_classes=4), batch_size=4)
    train, val, test = (dm.split(s) for s in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (36, 2, 2)
    assert sorted(marks(train) + marks(val) + marks(test)) == list(range(40))
    image, label = val[0]
    assert image.shape == (1, 6, 6) and image.dtype == torch.uint8
    assert label == marks(val)[0] % 4


def test_folder_of_files_is_pooled_in_name_order(config, tmp_path):
    np.savez(tmp_path / "b.npz", images=marked(10, 10, (6, 6, 3)))
    np.savez(tmp_path / "a.npz", images=marked(10, 0, (6, 6, 3)))
    dm = build_datamodule(npz_cfg(config, tmp_path, channels=3, val_size=3, test_size=0.1), batch_size=4)
    train, val, test = (dm.split(s) for s in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (15, 3, 2)
    assert marks(train.dataset) == list(range(20))
    assert train[0][0].shape == (3, 6, 6) and train[0][1] == -1


def test_train_and_test_named_files_are_the_splits(config, tmp_path):
    np.savez(tmp_path / "set_train.npz", images=marked(20))
    np.savez(tmp_path / "set_test.npz", images=marked(5, 100))
    np.savez(tmp_path / "extra.npz", images=marked(3, 200))
    dm = build_datamodule(npz_cfg(config, tmp_path, val_size=4), batch_size=4)
    train, val, test = (dm.split(s) for s in ("train", "val", "test"))
    assert marks(test) == list(range(100, 105))
    assert (len(train), len(val)) == (16, 4)
    assert sorted(marks(train) + marks(val)) == list(range(20))


def test_val_named_files_are_used_when_present(config, tmp_path):
    for name, start in (("train", 0), ("val", 50), ("test", 100)):
        np.savez(tmp_path / f"{name}.npz", images=marked(5, start))
    dm = build_datamodule(npz_cfg(config, tmp_path), batch_size=4)
    assert [marks(dm.split(s))[0] for s in ("train", "val", "test")] == [0, 50, 100]


@pytest.mark.parametrize(
    "arrays, overrides, message",
    [
        ({"pixels": marked(4)}, {}, r"has no 'images' array \(it has: pixels\): save the images under the name 'images'"),
        ({"images": marked(4, shape=(28, 28))}, {}, r"images are 28x28 but dataset.image_size=6: set dataset.image_size=28$"),
        ({"images": marked(4, shape=(6, 6, 3))}, {}, r"images have 3 channel\(s\) but dataset.channels=1: set dataset.channels=3$"),
        ({"images": marked(4).astype(np.float32)}, {}, r"images have dtype float32, not uint8"),
        ({"images": marked(4)}, {"num_classes": 3}, r"has no labels but dataset.num_classes=3: set dataset.num_classes=0$"),
        (
            {"images": marked(4), "labels": np.array([0, 1, 2, 7])},
            {"num_classes": 3},
            r"labels go up to 7 but dataset.num_classes=3: set dataset.num_classes=8$",
        ),
        ({"images": np.array([None] * 4, dtype=object)}, {}, r"cannot read array 'images' .*allow_pickle"),
    ],
)
def test_bad_arrays_are_user_errors(config, tmp_path, arrays, overrides, message):
    np.savez(tmp_path / "data.npz", **arrays)
    dm = build_datamodule(npz_cfg(config, tmp_path / "data.npz", **overrides), batch_size=4)
    with pytest.raises(UserError, match=message):
        dm.split("train")


def test_corrupt_archive_is_a_user_error(config, tmp_path):
    (tmp_path / "data.npz").write_bytes(b"not a zip file")
    dm = build_datamodule(npz_cfg(config, tmp_path), batch_size=4)
    with pytest.raises(UserError, match=r"^cannot read array 'images' of .*data.npz' .*: replace it with a valid .npz"):
        dm.split("train")


def test_folder_without_npz_files_is_a_user_error(config, tmp_path):
    with pytest.raises(UserError, match=r"^no .npz files in .*: set dataset.root to an .npz file or a folder of them$"):
        build_datamodule(npz_cfg(config, tmp_path), batch_size=4)


def test_held_out_sizes_that_leave_no_training_data_are_user_errors(config, tmp_path):
    np.savez(tmp_path / "data.npz", images=marked(10))
    dm = build_datamodule(npz_cfg(config, tmp_path, val_size=5, test_size=5), batch_size=4)
    with pytest.raises(UserError, match=r"leave no training images out of 10: lower dataset.val_size"):
        dm.split("train")
