"""Typed view of a `configs/dataset/<name>.yaml` entry, checked once so loaders can trust it."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from main.utils.errors import UserError

FORMATS = ("digits", "cifar10", "imagenet", "npz", "folder")

# Data sets whose yaml may omit `format`; every other name must set it.
NAME_TO_FORMAT = {
    "digits": "digits",
    "cifar10": "cifar10",
    "imagenet32": "imagenet",
    "imagenet64": "imagenet",
    "npz": "npz",
    "folder": "folder",
    "celeba64": "folder",
    "celebahq256": "folder",
    "ffhq256": "folder",
    "ffhq1024": "folder",
    "lsun_bedroom": "folder",
    "lsun_church": "folder",
    "afhq": "folder",
    "imagenet256": "folder",
}

_REQUIRED = ("name", "image_size", "channels", "num_classes")


@dataclasses.dataclass(frozen=True)
class DatasetConfig:
    """The keys the data layer reads; unknown keys are ignored (they belong to other components)."""

    name: str
    format: str
    image_size: int
    channels: int
    num_classes: int
    root: str | None = None
    bits: int = 8
    flip: bool = False
    pixel_mean: float = 127.5
    pixel_std: float = 127.5
    download: bool = False
    on_bad_file: str = "error"
    # Held-out split sizes: an int is a number of images, a float in (0, 1) a fraction.
    val_size: int | float = 0.05
    test_size: int | float = 0.05
    # Image-folder options.
    center_crop: int | None = None
    class_folders: bool = False
    split_file: str | None = None
    verify_files: bool = True

    @classmethod
    def parse(cls, cfg: DatasetConfig | DictConfig | Mapping[str, Any]) -> DatasetConfig:
        if isinstance(cfg, DatasetConfig):
            return cfg
        raw = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
        for key in _REQUIRED:
            if raw.get(key) is None:
                raise UserError(f"dataset config has no '{key}': set dataset.{key}=<value>")
        name = str(raw["name"])
        fmt = raw.get("format") or NAME_TO_FORMAT.get(name)
        if fmt is None:
            raise UserError(
                f"unknown dataset '{name}': use one of {', '.join(sorted(NAME_TO_FORMAT))} "
                f"or set dataset.format to one of {', '.join(FORMATS)}"
            )
        if fmt not in FORMATS:
            raise UserError(f"unknown dataset.format '{fmt}': use one of {', '.join(FORMATS)}")
        fields = {f.name for f in dataclasses.fields(cls)}
        config = cls(**{k: v for k, v in raw.items() if k in fields} | {"name": name, "format": fmt})
        config._check()
        return config

    def _check(self) -> None:
        if self.channels not in (1, 3):
            raise UserError(f"dataset.channels={self.channels} is not supported: use 1 (grayscale) or 3 (RGB)")
        if self.image_size <= 0 or self.num_classes < 0:
            raise UserError("dataset.image_size must be positive and dataset.num_classes >= 0: fix the dataset config")
        if self.on_bad_file not in ("skip", "error"):
            raise UserError(f"dataset.on_bad_file='{self.on_bad_file}' is not valid: use skip or error")
        if not 1 <= self.bits <= 8:
            raise UserError(f"dataset.bits={self.bits} is not valid: use a value from 1 to 8")

    def existing_root(self, can_download: bool = False) -> Path:
        """The data root as an absolute path, or a one-line error saying how to set it."""
        hint = " (or dataset.download=true)" if can_download else ""
        if self.root is None:
            raise UserError(f"dataset.root is not set for '{self.name}': set dataset.root=<path>{hint}")
        root = Path(self.root).expanduser().absolute()
        if not root.exists():
            raise UserError(f"data root '{root}' does not exist: set dataset.root=<path>{hint}")
        return root
