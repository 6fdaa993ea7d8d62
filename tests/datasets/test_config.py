"""The bundled yaml files and the config parsing errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from main.datasets import build_datamodule
from main.datasets.common import fixed_split
from main.datasets.config import NAME_TO_FORMAT, DatasetConfig
from main.datasets.digits import TEST_COUNT, VAL_COUNT, digits_images
from main.utils.errors import UserError

CONFIG_DIR = Path(__file__).resolve().parents[2] / "main" / "configs" / "dataset"
CONFIGS = sorted(CONFIG_DIR.glob("*.yaml"))
COMMON_KEYS = ("name", "root", "image_size", "channels", "num_classes", "bits", "flip", "pixel_mean", "pixel_std")


def test_every_named_data_set_has_a_config():
    assert {p.stem for p in CONFIGS} == set(NAME_TO_FORMAT)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_has_documented_common_keys(path):
    cfg = OmegaConf.load(path)
    assert cfg.name == path.stem
    keys = COMMON_KEYS + (("on_bad_file",) if cfg.format == "folder" else ())
    for key in keys:
        assert key in cfg, f"{path.name} lacks {key}"
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            assert "  # " in line, f"{path.name}: key without a comment: {line}"
    parsed = DatasetConfig.parse(cfg)
    assert parsed.bits == (5 if path.stem == "ffhq256" else 8)
    assert (parsed.root is None) == (path.stem in ("digits", "folder", "npz"))


def test_cifar10_config_offers_download_off_by_default():
    assert OmegaConf.load(CONFIG_DIR / "cifar10.yaml").download is False


def test_digits_pixel_statistics_match_the_train_split():
    cfg = OmegaConf.load(CONFIG_DIR / "digits.yaml")
    images, _ = digits_images()
    train = images[fixed_split(len(images), VAL_COUNT, TEST_COUNT)["train"]].astype(np.float64)
    assert cfg.pixel_mean == pytest.approx(train.mean(), abs=1e-4)
    assert cfg.pixel_std == pytest.approx(train.std(), abs=1e-4)


def test_plain_dict_config_is_accepted():
    dm = build_datamodule({"name": "digits", "image_size": 8, "channels": 1, "num_classes": 10}, batch_size=4)
    assert (dm.image_size, dm.channels, dm.num_classes) == (8, 1, 10)


def test_unknown_data_set_name_is_a_user_error():
    with pytest.raises(UserError, match=r"^unknown dataset 'mnist': use one of .*set dataset.format"):
        build_datamodule({"name": "mnist", "image_size": 28, "channels": 1, "num_classes": 10}, batch_size=4)


def test_unknown_format_is_a_user_error():
    cfg = {"name": "x", "format": "tfrecord", "image_size": 8, "channels": 1, "num_classes": 0}
    with pytest.raises(UserError, match="unknown dataset.format 'tfrecord'"):
        build_datamodule(cfg, batch_size=4)


def test_missing_key_is_a_user_error(config):
    cfg = config("digits")
    del cfg["image_size"]
    with pytest.raises(UserError, match=r"no 'image_size': set dataset.image_size=<value>"):
        build_datamodule(cfg, batch_size=4)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("channels", 2, "dataset.channels=2 is not supported"),
        ("on_bad_file", "ignore", "dataset.on_bad_file='ignore' is not valid"),
        ("bits", 9, "dataset.bits=9 is not valid"),
    ],
)
def test_invalid_values_are_user_errors(config, key, value, message):
    with pytest.raises(UserError, match=message):
        build_datamodule(config("folder", root="/tmp", **{key: value}), batch_size=4)


def test_unset_root_names_the_fix(config):
    with pytest.raises(UserError, match=r"^dataset.root is not set for 'folder': set dataset.root=<path>$"):
        build_datamodule(config("folder"), batch_size=4)


def test_absent_root_names_the_fix(config, tmp_path):
    with pytest.raises(UserError) as info:
        build_datamodule(config("celeba64", root=tmp_path / "nope"), batch_size=4)
    assert str(info.value) == f"data root '{tmp_path / 'nope'}' does not exist: set dataset.root=<path>"
    assert "\n" not in str(info.value)
