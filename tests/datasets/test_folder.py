"""Image folders: discovery, crops, the three split rules, class folders, bad files, errors."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from PIL import Image

from main.datasets import build_datamodule
from main.datasets.folder import list_images
from main.utils.errors import UserError

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)
CLASS_COLORS = {"cat": (250, 10, 10), "dog": (10, 250, 10), "wild": (10, 10, 250)}


def folder_cfg(config, root, **overrides):
    return config("folder", root=root, **{"image_size": 8} | overrides)


def splits(dm) -> dict[str, list[str]]:
    return {s: list(dm.split(s).files) for s in ("train", "val", "test")}


def write_tree(root: Path, write_image, count: int, prefix: str = "") -> None:
    for i in range(count):
        suffix = (".png", ".jpg")[i % 2]
        write_image(root / f"part{i % 3}" / f"{prefix}{i:03d}{suffix}", size=(10, 12))


@pytest.fixture
def afhq_root(tmp_path, write_image) -> Path:
    for split, count in (("train", 8), ("test", 2)):
        for name, color in CLASS_COLORS.items():
            for i in range(count):
                write_image(tmp_path / split / name / f"{name}_{i}.png", size=(20, 20), color=color)
    return tmp_path


def test_discovery_takes_image_extensions_only(tmp_path, write_image):
    for name in ("a.png", "b.jpg", "c.jpeg", "d.webp", "e.bmp", "sub/F.PNG", ".hidden.png", ".cache/g.png"):
        write_image(tmp_path / name)
    (tmp_path / "notes.txt").write_text("not an image")
    assert list_images(tmp_path) == ["a.png", "b.jpg", "c.jpeg", "d.webp", "e.bmp", "sub/F.PNG"]


def test_hash_split_is_disjoint_complete_and_stable_when_files_are_added(config, tmp_path, write_image):
    write_tree(tmp_path, write_image, 40)
    cfg = folder_cfg(config, tmp_path, val_size=0.2, test_size=0.2)
    before = splits(build_datamodule(cfg, batch_size=4))
    assert all(before.values())
    assert sorted(f for files in before.values() for f in files) == list_images(tmp_path)
    write_tree(tmp_path, write_image, 10, prefix="new")
    after = splits(build_datamodule(cfg, batch_size=4, seed=7))
    for name in before:
        assert set(before[name]) <= set(after[name])


def test_images_are_resized_to_square_uint8(config, tmp_path, write_image):
    write_tree(tmp_path, write_image, 12)
    dm = build_datamodule(folder_cfg(config, tmp_path, val_size=0.3, test_size=0.3), batch_size=2)
    image, label = dm.split("train")[0]
    assert image.shape == (3, 8, 8) and image.dtype == torch.uint8 and label == -1
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (2, 3, 8, 8) and labels.tolist() == [-1] * 2


def test_grayscale_output(config, tmp_path, write_image):
    write_tree(tmp_path, write_image, 12)
    dm = build_datamodule(folder_cfg(config, tmp_path, channels=1, val_size=0.3, test_size=0.3), batch_size=4)
    assert dm.split("test")[0][0].shape == (1, 8, 8)


def test_shorter_side_resize_then_center_crop(config, tmp_path):
    # LSUN-style: a 48x24 landscape image; the middle square is green, the sides red and blue.
    image = Image.new("RGB", (48, 24), RED)
    image.paste(Image.new("RGB", (24, 24), GREEN), (12, 0))
    image.paste(Image.new("RGB", (12, 24), BLUE), (36, 0))
    for split in ("train", "test"):
        (tmp_path / split).mkdir()
        image.save(tmp_path / split / "room.webp", lossless=True)
    dm = build_datamodule(config("lsun_bedroom", root=tmp_path, image_size=16), batch_size=1)
    out = dm.split("test")[0][0]
    assert out.shape == (3, 16, 16)
    assert out[:, :, 3:13].tolist() == torch.tensor(GREEN, dtype=torch.uint8)[:, None, None].expand(3, 16, 10).tolist()


def test_celeba_center_crop_148_then_resize(config, tmp_path):
    # A 178x218 aligned face whose central 148x148 square is green and the rest red.
    image = Image.new("RGB", (178, 218), RED)
    image.paste(Image.new("RGB", (148, 148), GREEN), (15, 35))
    for split in ("train", "test"):
        (tmp_path / split).mkdir()
        image.save(tmp_path / split / "000001.png")
    out = build_datamodule(config("celeba64", root=tmp_path), batch_size=1).split("test")[0][0]
    assert out.shape == (3, 64, 64)
    assert (out == torch.tensor(GREEN, dtype=torch.uint8)[:, None, None]).all()
    uncropped = build_datamodule(config("celeba64", root=tmp_path, center_crop=None), batch_size=1)
    assert (uncropped.split("test")[0][0][0] > 0).any()  # red from outside the crop shows up


def test_celeba_partition_file_decides_the_splits(config, tmp_path, write_image, caplog):
    names = [f"{i:06d}.jpg" for i in range(1, 8)]
    for name in names:
        write_image(tmp_path / "img_align_celeba" / name, size=(178, 218))
    (tmp_path / "list_eval_partition.txt").write_text("".join(f"{n} {s}\n" for n, s in zip(names[:6], (0, 0, 0, 1, 2, 2))))
    with caplog.at_level(logging.WARNING):
        parts = splits(build_datamodule(config("celeba64", root=tmp_path, flip=False), batch_size=1))
    prefix = "img_align_celeba/"
    assert parts == {"train": [prefix + n for n in names[:3]], "val": [prefix + names[3]], "test": [prefix + n for n in names[4:6]]}
    assert "1 image(s) are not listed" in caplog.text


def test_malformed_partition_file_is_a_user_error(config, tmp_path, write_image):
    write_image(tmp_path / "img_align_celeba" / "000001.jpg")
    (tmp_path / "list_eval_partition.txt").write_text("000001.jpg 0\n000002.jpg train\n")
    with pytest.raises(UserError, match=r"list_eval_partition.txt:2: expected '<file name> <0\|1\|2>'"):
        build_datamodule(config("celeba64", root=tmp_path), batch_size=1).split("train")


def test_afhq_class_folders_and_train_test_layout(config, afhq_root):
    dm = build_datamodule(config("afhq", root=afhq_root, image_size=8, val_size=0.25, flip=False), batch_size=4)
    train, val, test = (dm.split(s) for s in ("train", "val", "test"))
    assert len(test) == 6 and len(train) + len(val) == 24 and len(val) > 0
    assert not set(train.files) & set(val.files)
    for dataset in (train, val, test):
        for i in range(len(dataset)):
            image, label = dataset[i]
            name = ("cat", "dog", "wild")[label]
            assert str(dataset.files[i]).startswith(name + "/")
            assert image[:, 4, 4].tolist() == list(CLASS_COLORS[name])
    assert dm.num_classes == 3


def test_afhq_class_count_mismatch_is_a_user_error(config, afhq_root):
    dm = build_datamodule(config("afhq", root=afhq_root, num_classes=2), batch_size=4)
    with pytest.raises(
        UserError,
        match=r"found 3 class folders \(cat, dog, wild\) in .* but dataset.num_classes=2: "
        r"set dataset.num_classes=3$",
    ):
        dm.split("train")


def test_test_class_missing_from_train_is_a_user_error(config, afhq_root, write_image):
    write_image(afhq_root / "test" / "fox" / "fox_0.png")
    dm = build_datamodule(config("afhq", root=afhq_root), batch_size=4)
    with pytest.raises(UserError, match=r"is in class folder 'fox', which the train split lacks"):
        dm.split("test")


def test_image_outside_class_folders_is_a_user_error(config, afhq_root, write_image):
    write_image(afhq_root / "train" / "stray.png")
    with pytest.raises(UserError, match=r"stray.png' is not inside a class folder"):
        build_datamodule(config("afhq", root=afhq_root), batch_size=4).split("train")


def test_classes_require_class_folders(config, tmp_path, write_image):
    write_image(tmp_path / "a.png")
    with pytest.raises(UserError, match=r"^dataset.num_classes=3 but .*: set dataset.class_folders=true"):
        build_datamodule(folder_cfg(config, tmp_path, num_classes=3), batch_size=4)


def write_bad_test_file(root: Path, write_image, truncated: bool) -> None:
    """train/, val/ and test/ with good images, plus one broken file in test/."""
    for split in ("train", "val", "test"):
        for i in range(3):
            write_image(root / split / f"{i}.jpg", size=(16, 16))
    good = (root / "test" / "0.jpg").read_bytes()
    (root / "test" / "bad.jpg").write_bytes(good[: len(good) // 2] if truncated else b"garbage")


def test_unreadable_file_found_by_verification_is_an_error(config, tmp_path, write_image):
    write_bad_test_file(tmp_path, write_image, truncated=False)
    dm = build_datamodule(folder_cfg(config, tmp_path), batch_size=2)
    dm.setup("fit")  # the test split is not built yet
    with pytest.raises(
        UserError,
        match=r"^1 unreadable image file\(s\) in the test split, e.g. .*bad.jpg': "
        r"remove them or set dataset.on_bad_file=skip$",
    ):
        dm.setup("test")


def test_unreadable_file_found_by_verification_is_skipped_and_counted(config, tmp_path, write_image, caplog):
    write_bad_test_file(tmp_path, write_image, truncated=False)
    dm = build_datamodule(folder_cfg(config, tmp_path, on_bad_file="skip"), batch_size=2)
    with caplog.at_level(logging.WARNING):
        test = dm.split("test")
    assert list(test.files) == ["0.jpg", "1.jpg", "2.jpg"]
    assert "skipping 1 unreadable image file(s) in the test split" in caplog.text


def test_truncated_file_at_load_time_is_an_error(config, tmp_path, write_image):
    write_bad_test_file(tmp_path, write_image, truncated=True)
    test = build_datamodule(folder_cfg(config, tmp_path, verify_files=False), batch_size=2).split("test")
    assert list(test.files) == ["0.jpg", "1.jpg", "2.jpg", "bad.jpg"]
    with pytest.raises(
        UserError,
        match=r"^cannot read image '.*bad.jpg' \(.*\): remove it or set "
        r"dataset.on_bad_file=skip$",
    ):
        test[3]


def test_truncated_file_at_load_time_is_replaced_when_skipping(config, tmp_path, write_image, caplog):
    write_bad_test_file(tmp_path, write_image, truncated=True)
    dm = build_datamodule(folder_cfg(config, tmp_path, verify_files=False, on_bad_file="skip"), batch_size=2)
    test = dm.split("test")
    with caplog.at_level(logging.WARNING):
        image, _ = test[3]  # bad.jpg: replaced by the next image, wrapping around to 0.jpg
    assert torch.equal(image, test[0][0]) and test.skipped == 1
    assert "skipped unreadable image" in caplog.text


def test_empty_root_is_a_user_error(config, tmp_path):
    with pytest.raises(UserError, match=r"^data root '.*' is empty: put the images there or set dataset.root=<path>$"):
        build_datamodule(folder_cfg(config, tmp_path), batch_size=2).split("train")


def test_root_without_images_is_a_user_error(config, tmp_path):
    (tmp_path / "readme.txt").write_text("no images here")
    with pytest.raises(UserError, match=r"^no image files \(.png .jpg .jpeg .webp .bmp\) under '.*': set dataset.root"):
        build_datamodule(folder_cfg(config, tmp_path), batch_size=2).split("train")


def test_lsun_lmdb_gets_an_export_hint(config, tmp_path):
    (tmp_path / "bedroom_train_lmdb").mkdir()
    (tmp_path / "bedroom_train_lmdb" / "data.mdb").write_bytes(b"\0" * 16)
    with pytest.raises(UserError, match=r"holds an LMDB database \(data.mdb\), which is not read directly: export"):
        build_datamodule(config("lsun_bedroom", root=tmp_path), batch_size=2).split("train")


def test_root_that_is_a_file_is_a_user_error(config, tmp_path, write_image):
    write_image(tmp_path / "one.png")
    with pytest.raises(UserError, match=r"is not a folder: set dataset.root to a folder of images$"):
        build_datamodule(folder_cfg(config, tmp_path / "one.png"), batch_size=2)


def test_empty_split_folder_is_a_user_error(config, tmp_path, write_image):
    write_image(tmp_path / "train" / "a.png")
    (tmp_path / "test").mkdir()
    dm = build_datamodule(folder_cfg(config, tmp_path, val_size=0), batch_size=2)
    with pytest.raises(
        UserError,
        match=r"^the test split of '.*' has no images: add images or raise "
        r"dataset.test_size$",
    ):
        dm.split("test")


def test_hash_split_needs_fractions(config, tmp_path, write_image):
    write_image(tmp_path / "a.png")
    with pytest.raises(UserError, match=r"dataset.val_size=500 cannot split an image folder by hash: use a fraction"):
        build_datamodule(folder_cfg(config, tmp_path, val_size=500), batch_size=2).split("train")
