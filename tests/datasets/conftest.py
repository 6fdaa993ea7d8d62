"""Fixtures for the data-set tests: config loading and writers of small files in real formats."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from omegaconf import DictConfig, OmegaConf
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO / "main" / "configs" / "dataset"


def load_config(name: str, **overrides) -> DictConfig:
    """`configs/dataset/<name>.yaml` with overrides applied (paths become strings)."""
    cfg = OmegaConf.load(CONFIG_DIR / f"{name}.yaml")
    return OmegaConf.merge(cfg, {k: str(v) if isinstance(v, Path) else v for k, v in overrides.items()})


def save_image(path: Path, size: tuple[int, int] = (12, 10), color=(200, 30, 90), mode: str = "RGB") -> np.ndarray:
    """Write a solid image of `size` (width, height) plus a marker pixel; returns its HWC pixels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new(mode, size, color if mode == "RGB" else color[0])
    image.putpixel((0, 0), (255, 255, 255) if mode == "RGB" else 255)
    image.save(path)
    return np.asarray(image)


@pytest.fixture
def config():
    return load_config


@pytest.fixture
def write_image():
    return save_image
