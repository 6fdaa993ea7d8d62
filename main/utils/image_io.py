"""Images as the project stores them: uint8 pixels <-> floats in [-1, 1], and writing generated images: one PNG
per image (what FID tools read), a grid, and an .npz.

Folders are written under a temporary name and renamed when complete, so an interrupted run never
leaves a half-written sample folder, and an existing folder is refused unless overwriting is asked.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torchvision.io import write_png
from torchvision.utils import make_grid, save_image

from main.utils.errors import UserError


def to_unit_range(images: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 images -> floats in [-1, 1] (v / 127.5 - 1: 0 -> -1, 255 -> 1), the range the networks see."""
    return images.to(dtype) / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Floats in [-1, 1] -> uint8 images: clamped, then (x + 1) * 127.5 rounded (half to even); inverts `to_unit_range`."""
    return torch.round((x.float().clamp(-1, 1) + 1) * 127.5).to(torch.uint8)


def check_writable(folder: Path, overwrite: bool) -> None:
    """Refuse a folder that holds files, ours or the user's, unless overwrite is asked: the tasks write fixed names.

    Hidden entries do not count: the .<name>.partial folders of an interrupted run (replaced), or of other ranks starting.
    """
    if folder.is_dir() and any(not entry.name.startswith(".") for entry in folder.iterdir()) and not overwrite:
        raise UserError(
            f"'{folder}' already holds results or other files: pass overwrite=true to write over them, or choose another out_dir"
        )


def start_staging(folder: Path, create: bool = True) -> Path:
    """The temporary folder ``folder`` is written under (emptied and created if ``create``)."""
    staging = folder.with_name(f".{folder.name}.partial")
    if create:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    return staging


def finish_staging(staging: Path, folder: Path) -> None:
    """Replace ``folder`` by the completed staging folder."""
    if folder.exists():
        shutil.rmtree(folder)
    staging.rename(folder)


@contextmanager
def staged_folder(folder: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary folder that replaces ``folder`` only once everything in it is written."""
    check_writable(folder, overwrite)
    staging = start_staging(folder)
    yield staging
    finish_staging(staging, folder)


def save_pngs(images: torch.Tensor, folder: Path, start: int = 0) -> None:
    """uint8 images [N,C,H,W] -> folder/000000.png, ... (numbered from ``start``)."""
    for i, image in enumerate(images.cpu()):
        write_png(image, str(folder / f"{start + i:06d}.png"))


def grid_image(images: torch.Tensor, nrow: int | None = None) -> torch.Tensor:
    """uint8 images [N,C,H,W] -> one float grid [C', H', W'] in [0, 1]; small images are enlarged so the grid is viewable."""
    images = images.cpu().float() / 255
    scale = max(1, 64 // images.shape[-1])
    if scale > 1:
        images = torch.nn.functional.interpolate(images, scale_factor=scale, mode="nearest")
    return make_grid(images, nrow=nrow or int(np.ceil(np.sqrt(len(images)))), pad_value=1.0)


def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None) -> None:
    """uint8 images [N,C,H,W] -> one PNG grid."""
    save_image(grid_image(images, nrow), path)


def save_npz(path: Path, **arrays: torch.Tensor) -> None:
    """Images as uint8 NHWC (the layout FID tools and data sets use) plus any labels."""
    out = {}
    for name, value in arrays.items():
        value = value.cpu().numpy()
        out[name] = value.transpose(0, 2, 3, 1) if value.ndim == 4 else value
    np.savez_compressed(path, **out)
