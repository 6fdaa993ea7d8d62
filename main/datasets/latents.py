"""An autoencoder's latents of a data set, encoded once and cached on disk as memory-mapped .npy files.

The cache folder is named by the data set and a fingerprint of the autoencoder's weights, so another
autoencoder never reads stale latents. Each split is written under a temporary name and renamed when
complete: a run killed while encoding leaves no half-written split behind. Arrays are memory-mapped, so
ImageNet-size caches need not fit in memory. The train split is cached with its mirrored copies when the
data set flips, so flips stay exact (the mirror of a latent is not the latent of the mirror).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from main.datasets.common import MirrorPairs
from main.datasets.datamodule import ImageDataModule
from main.utils.errors import UserError


def autoencoder_fingerprint(autoencoder: nn.Module) -> str:
    """A short hash of the weights: the cache key of the latents they produce."""
    digest = hashlib.sha256()
    for name, tensor in sorted(autoencoder.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 images -> floats in [-1, 1], the autoencoders' input range."""
    return images.float() / 127.5 - 1.0


@torch.no_grad()
def encode_images(autoencoder: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """uint8 images -> the posterior means of their latents (the cached representation)."""
    return autoencoder.encode(to_unit_range(images))[0]


class CachedLatents(Dataset):
    """(float latent [C, h, w], label) pairs read from a memory-mapped split."""

    def __init__(self, latents: np.ndarray, labels: np.ndarray):
        self.latents, self.labels = latents, labels

    def __len__(self) -> int:
        return len(self.latents)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(np.array(self.latents[index], dtype=np.float32)), int(self.labels[index])


class CachedMirrorPairs(MirrorPairs):
    """A cached train split stored as MirrorPairs order (n images, then their mirrors), for the flipping sampler."""

    def __init__(self, cached: CachedLatents):
        self.dataset, self.n = cached, len(cached) // 2

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.dataset[index]


class LatentCache:
    """The folder <root>/<data set>-<autoencoder fingerprint>/ holding <split>_latents.npy and <split>_labels.npy."""

    def __init__(self, root: Path | str, dataset_name: str, autoencoder: nn.Module):
        self.autoencoder = autoencoder
        self.folder = Path(root) / f"{dataset_name}-{autoencoder_fingerprint(autoencoder)}"

    def paths(self, split: str) -> tuple[Path, Path]:
        return self.folder / f"{split}_latents.npy", self.folder / f"{split}_labels.npy"

    def build(self, images: ImageDataModule, splits=("train", "val", "test"), batch_size: int = 64, device="cpu") -> LatentCache:
        """Encode every split not cached yet."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self.autoencoder.to(device).eval()
        for split in splits:
            if not all(p.is_file() for p in self.paths(split)):
                self._encode(images.split(split), split, batch_size, device)
        (self.folder / "meta.json").write_text(json.dumps({"flip": images.config.flip, "dataset": images.config.name}))
        return self

    def _encode(self, dataset: Dataset, split: str, batch_size: int, device) -> None:
        loader = DataLoader(dataset, batch_size=batch_size)
        latents_path, labels_path = self.paths(split)
        # Per-process temporary names: DDP ranks that encode the same split at once each rename a complete file.
        tmp_latents, tmp_labels = (p.with_name(f"{p.stem}.partial-{os.getpid()}.npy") for p in (latents_path, labels_path))
        array, labels, start = None, np.empty(len(dataset), dtype=np.int64), 0
        for images, batch_labels in loader:
            z = encode_images(self.autoencoder, images.to(device)).float().cpu().numpy()
            if array is None:
                array = np.lib.format.open_memmap(tmp_latents, mode="w+", dtype=np.float32, shape=(len(dataset), *z.shape[1:]))
            array[start : start + len(z)] = z
            labels[start : start + len(z)] = batch_labels.numpy()
            start += len(z)
        if array is None:
            raise UserError(f"the {split} split is empty: nothing to encode")
        array.flush()
        del array
        np.save(tmp_labels, labels)
        os.replace(tmp_labels, labels_path)
        os.replace(tmp_latents, latents_path)

    def split(self, split: str) -> Dataset:
        latents_path, labels_path = self.paths(split)
        if not latents_path.is_file():
            raise UserError(f"no cached latents for the {split} split in '{self.folder}': build the cache first")
        cached = CachedLatents(np.load(latents_path, mmap_mode="r"), np.load(labels_path))
        meta = json.loads((self.folder / "meta.json").read_text())
        return CachedMirrorPairs(cached) if split == "train" and meta["flip"] else cached

    def statistics(self, chunk: int = 4096) -> tuple[float, float]:
        """(shift, scale): mean and standard deviation of every train latent element, in float64 chunks."""
        latents = np.load(self.paths("train")[0], mmap_mode="r")
        total, total_sq, count = 0.0, 0.0, 0
        for start in range(0, len(latents), chunk):
            block = np.asarray(latents[start : start + chunk], dtype=np.float64)
            total, total_sq, count = total + block.sum(), total_sq + (block**2).sum(), count + block.size
        mean = float(total / count)  # plain floats: checkpoints hold only plain data
        return mean, math.sqrt(max(float(total_sq / count) - mean**2, 1e-12))


class LatentDataModule(ImageDataModule):
    """The image data module's loaders and samplers, serving cached latents instead of images."""

    def __init__(self, cache: LatentCache, dataset_cfg, batch_size: int, num_workers: int = 0, seed: int = 0):
        super().__init__(dataset_cfg, batch_size, num_workers=num_workers, seed=seed)
        self.cache = cache

    def split(self, name: str) -> Dataset:
        if name not in self._splits:
            self._splits[name] = self.cache.split(name)
        return self._splits[name]
