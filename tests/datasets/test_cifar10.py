"""CIFAR-10 in torchvision's pickled layout and as npz files, plus the real copy if present."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from main.datasets import build_datamodule
from main.utils.errors import UserError

PER_BATCH, TEST_COUNT = 4, 6


def make_images(count: int, start: int) -> np.ndarray:
    """Distinct NCHW images: every channel has its own value, image k carries k in one pixel."""
    images = np.zeros((count, 3, 32, 32), np.uint8)
    images[:, 0], images[:, 1], images[:, 2] = 10, 20, 30
    images[:, 0, 0, 0] = np.arange(start, start + count)
    return images


def write_batch(path: Path, images: np.ndarray, labels: list[int]) -> None:
    """Pickle like the official Python 2 files: protocol 2, numpy arrays under numpy.core names."""
    entry = {
        "batch_label": "fake",
        "data": images.reshape(len(images), -1),
        "labels": labels,
        "filenames": [f"img{i}.png" for i in range(len(images))],
    }
    blob = pickle.dumps(entry, protocol=2).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    path.write_bytes(blob)


@pytest.fixture
def batches_root(tmp_path) -> Path:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for b in range(5):
        write_batch(
            folder / f"data_batch_{b + 1}", make_images(PER_BATCH, b * PER_BATCH), [(b * PER_BATCH + i) % 10 for i in range(PER_BATCH)]
        )
    write_batch(folder / "test_batch", make_images(TEST_COUNT, 100), [9 - i for i in range(TEST_COUNT)])
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [str(i) for i in range(10)]}, protocol=2))
    return tmp_path


def write_npz_copy(folder: Path, sizes=(12, 8), test=TEST_COUNT, side=32) -> None:
    folder.mkdir(exist_ok=True)
    start = 0
    for k, count in enumerate(sizes):
        images = np.zeros((count, side, side, 3), np.uint8)
        images[:, 0, 0, 0] = np.arange(start, start + count)
        np.savez_compressed(folder / f"cifar10_train_{k}.npz", images=images, labels=np.arange(count) % 10)
        start += count
    np.savez_compressed(folder / "cifar10_test.npz", images=np.zeros((test, side, side, 3), np.uint8), labels=np.arange(test) % 10)


def marks(dataset) -> list[int]:
    return [int(dataset[i][0][0, 0, 0]) for i in range(len(dataset))]


def test_torchvision_itself_rejects_a_repacked_copy(batches_root):
    # Why we read the pickles ourselves: torchvision md5-checks every file against the official archive.
    with pytest.raises(RuntimeError, match="not found or corrupted"):
        torchvision.datasets.CIFAR10(str(batches_root), train=True, download=False)


def test_pickled_batches_load_with_fixed_splits(config, batches_root):
    dm = build_datamodule(config("cifar10", flip=False, root=batches_root, val_size=5), batch_size=4)
    train, val, test = (dm.split(s) for s in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (15, 5, TEST_COUNT)
    assert sorted(marks(train) + marks(val)) == list(range(20))
    assert not set(marks(train)) & set(marks(val))
    assert marks(test) == list(range(100, 100 + TEST_COUNT))
    image, label = train[0]
    assert image.dtype == torch.uint8 and image.shape == (3, 32, 32)
    assert image[:, 5, 5].tolist() == [10, 20, 30]  # CHW rows are not mistaken for HWC
    assert label == marks(train)[0] % 10
    assert [test[i][1] for i in range(TEST_COUNT)] == [9 - i for i in range(TEST_COUNT)]
    again = build_datamodule(config("cifar10", flip=False, root=batches_root, val_size=5), batch_size=4, seed=99)
    assert marks(again.split("val")) == marks(val)


def test_batches_folder_itself_can_be_the_root(config, batches_root):
    cfg = config("cifar10", flip=False, root=batches_root / "cifar-10-batches-py", val_size=5)
    dm = build_datamodule(cfg, batch_size=4)
    assert len(dm.split("test")) == TEST_COUNT


def test_pickles_naming_other_objects_are_refused(config, batches_root):
    (batches_root / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps({"data": os.getcwd, "labels": []}, protocol=2))
    dm = build_datamodule(config("cifar10", flip=False, root=batches_root, val_size=5), batch_size=4)
    with pytest.raises(UserError, match=r"test_batch' is not a CIFAR-10 python batch \(unexpected object posix.getcwd"):
        dm.split("test")


def test_missing_batch_file_is_a_user_error(config, batches_root):
    (batches_root / "cifar-10-batches-py" / "data_batch_3").unlink()
    dm = build_datamodule(config("cifar10", flip=False, root=batches_root, val_size=5), batch_size=4)
    with pytest.raises(UserError, match=r"has no data_batch_3: re-extract cifar-10-python.tar.gz"):
        dm.split("train")


def test_npz_copy_loads_in_sorted_file_order(config, tmp_path):
    write_npz_copy(tmp_path)
    dm = build_datamodule(config("cifar10", flip=False, root=tmp_path, val_size=4), batch_size=4)
    train, val, test = (dm.split(s) for s in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (16, 4, TEST_COUNT)
    assert marks(train.dataset) == list(range(20))  # cifar10_train_0 then cifar10_train_1
    assert sorted(marks(train) + marks(val)) == list(range(20))
    assert train[0][0].shape == (3, 32, 32)


def test_npz_copy_of_the_wrong_size_is_a_user_error(config, tmp_path):
    write_npz_copy(tmp_path, side=28)
    dm = build_datamodule(config("cifar10", flip=False, root=tmp_path, val_size=4), batch_size=4)
    with pytest.raises(UserError, match=r"images are 28x28 but dataset.image_size=32: set dataset.image_size=28$"):
        dm.split("train")


def test_absent_root_suggests_download(config, tmp_path):
    with pytest.raises(UserError, match=r"does not exist: set dataset.root=<path> \(or dataset.download=true\)$"):
        build_datamodule(config("cifar10", flip=False, root=tmp_path / "missing"), batch_size=4)


def test_folder_without_cifar_files_is_a_user_error(config, tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(UserError, match=r"^no CIFAR-10 files in .*: set dataset.download=true or point dataset.root"):
        build_datamodule(config("cifar10", flip=False, root=tmp_path), batch_size=4)


def shared_data() -> Path:
    env = os.environ.get("GENVAE_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


@pytest.mark.skipif(
    not (shared_data() / "cifar10_test.npz").is_file(),
    reason="real CIFAR-10 copy not found (set GENVAE_SHARED_DATA or provide ../shared/data)",
)
def test_real_cifar10_copy(config):
    dm = build_datamodule(config("cifar10", flip=False, root=shared_data()), batch_size=4)
    train, val, test = (dm.split(s) for s in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (45000, 5000, 10000)
    assert dm.split("train").dataset.labels[:5].tolist() == [6, 9, 9, 4, 1]  # canonical data_batch_1 order
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    assert not set(train.indices) & set(val.indices)
    image, label = train[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.uint8 and 0 <= label < 10
