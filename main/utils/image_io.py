"""Writing generated images: one PNG per image (what FID tools read), a grid, and an .npz.

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


def check_writable(folder: Path, overwrite: bool) -> None:
    if folder.exists() and any(folder.iterdir()) and not overwrite:
        raise UserError(f"'{folder}' already holds results: pass overwrite=true to replace them, or choose another out_dir")


@contextmanager
def staged_folder(folder: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary folder that replaces ``folder`` only once everything in it is written."""
    check_writable(folder, overwrite)
    staging = folder.with_name(f".{folder.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    yield staging
    if folder.exists():
        shutil.rmtree(folder)
    staging.rename(folder)


def save_pngs(images: torch.Tensor, folder: Path, start: int = 0) -> None:
    """uint8 images [N,C,H,W] -> folder/000000.png, ... (numbered from ``start``)."""
    for i, image in enumerate(images.cpu()):
        write_png(image, str(folder / f"{start + i:06d}.png"))


def save_grid(images: torch.Tensor, path: Path, nrow: int | None = None) -> None:
    """uint8 images [N,C,H,W] -> one PNG grid (small images are enlarged so the grid is viewable)."""
    images = images.cpu().float() / 255
    scale = max(1, 64 // images.shape[-1])
    if scale > 1:
        images = torch.nn.functional.interpolate(images, scale_factor=scale, mode="nearest")
    save_image(make_grid(images, nrow=nrow or int(np.ceil(np.sqrt(len(images)))), pad_value=1.0), path)


def save_npz(path: Path, **arrays: torch.Tensor) -> None:
    """Images as uint8 NHWC (the layout FID tools and data sets use) plus any labels."""
    out = {}
    for name, value in arrays.items():
        value = value.cpu().numpy()
        out[name] = value.transpose(0, 2, 3, 1) if value.ndim == 4 else value
    np.savez_compressed(path, **out)
