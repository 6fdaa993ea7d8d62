"""Downsampled ImageNet in the official npz batch format (tiny 8x8 stand-ins)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from main.datasets import build_datamodule
from main.datasets.imagenet import train_batch_files
from main.utils.errors import UserError

SIDE, ROWS = 8, 3


def rows(start: int, count: int, side: int = SIDE) -> np.ndarray:
    """CHW-flattened rows; channel c of image k is filled with 3 * k + c."""
    images = np.arange(start, start + count)[:, None, None, None] * 3 + np.arange(3)[None, :, None, None]
    return np.broadcast_to(images, (count, 3, side, side)).reshape(count, -1).astype(np.uint8)


def write_imagenet(root: Path, compressed_val: bool = True, side: int = SIDE) -> None:
    train_dir, val_dir = root / "Imagenet8_train_npz", root / "Imagenet8_val_npz"
    train_dir.mkdir(parents=True)
    val_dir.mkdir()
    for k, batch in enumerate((1, 2, 10)):  # 10 must come after 2
        labels = [1 + (k * ROWS + i) % 1000 for i in range(ROWS)]  # 1-based, as distributed
        np.savez(
            train_dir / f"train_data_batch_{batch}.npz", data=rows(k * ROWS, ROWS, side), labels=labels, mean=np.zeros(3 * side * side)
        )
    save = np.savez_compressed if compressed_val else np.savez
    save(val_dir / "val_data.npz", data=rows(50, 4, side), labels=[1000, 1, 2, 3])


def imagenet_cfg(config, root, **overrides):
    return config("imagenet32", root=root, image_size=SIDE, val_size=2, **overrides)


def test_batches_are_found_in_numeric_order(tmp_path):
    write_imagenet(tmp_path)
    assert [p.name for p in train_batch_files(tmp_path)] == ["train_data_batch_1.npz", "train_data_batch_2.npz", "train_data_batch_10.npz"]


def test_splits_images_and_zero_based_labels(config, tmp_path):
    write_imagenet(tmp_path)
    dm = build_datamodule(imagenet_cfg(config, tmp_path), batch_size=2)
    train, val, test = (dm.split(s) for s in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (7, 2, 4)
    assert not set(train.indices) & set(val.indices)
    pool = train.dataset
    for k in range(9):  # batch files concatenated in numeric order
        image, label = pool[k]
        assert image.dtype == torch.uint8 and image.shape == (3, SIDE, SIDE)
        assert image[:, 4, 4].tolist() == [3 * k, 3 * k + 1, 3 * k + 2]
        assert label == k % 1000
    assert [test[i][1] for i in range(4)] == [999, 0, 1, 2]
    assert test[0][0][2, 0, 0] == 3 * 50 + 2


def test_uncompressed_batches_are_memory_mapped(config, tmp_path, caplog):
    write_imagenet(tmp_path, compressed_val=True)
    dm = build_datamodule(imagenet_cfg(config, tmp_path), batch_size=2)
    with caplog.at_level(logging.WARNING):
        assert all(isinstance(chunk, np.memmap) for chunk in dm.split("train").dataset.chunks)
        test = dm.split("test")
    assert not isinstance(test.chunks[0], np.memmap)
    assert "val_data.npz' is compressed, so it is read into memory" in caplog.text


def test_labels_are_minus_one_without_classes(config, tmp_path):
    write_imagenet(tmp_path)
    dm = build_datamodule(imagenet_cfg(config, tmp_path, num_classes=0), batch_size=2)
    assert dm.split("test")[0][1] == -1


def test_wrong_image_size_is_a_user_error(config, tmp_path):
    write_imagenet(tmp_path, side=16)
    dm = build_datamodule(imagenet_cfg(config, tmp_path), batch_size=2)
    with pytest.raises(UserError, match=r"images are 16x16 but dataset.image_size=8: set dataset.image_size=16$"):
        dm.split("test")


def test_folder_without_batches_is_a_user_error(config, tmp_path):
    np.savez(tmp_path / "val_data.npz", data=rows(0, 2), labels=[1, 2])
    with pytest.raises(UserError, match=r"^no downsampled-ImageNet batches in .*need train_data_batch_<k>.npz"):
        build_datamodule(imagenet_cfg(config, tmp_path), batch_size=2)


def test_archive_without_data_array_is_a_user_error(config, tmp_path):
    write_imagenet(tmp_path)
    np.savez(tmp_path / "Imagenet8_val_npz" / "val_data.npz", images=rows(0, 2), labels=[1, 2])
    dm = build_datamodule(imagenet_cfg(config, tmp_path), batch_size=2)
    with pytest.raises(UserError, match=r"val_data.npz' has no uint8 \(N, 3\*S\*S\) 'data' array"):
        dm.split("test")


def test_rows_that_are_not_rgb_squares_are_a_user_error(config, tmp_path):
    write_imagenet(tmp_path)
    np.savez(tmp_path / "Imagenet8_val_npz" / "val_data.npz", data=np.zeros((2, 784), np.uint8), labels=[1, 2])
    dm = build_datamodule(imagenet_cfg(config, tmp_path), batch_size=2)
    with pytest.raises(UserError, match=r"val_data.npz: rows of 784 values are not flattened 3xSxS RGB images"):
        dm.split("test")
