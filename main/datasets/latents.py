"""An autoencoder's latents of a data set, encoded once and cached on disk as memory-mapped .npy files.

A cache is only ever read by a run with the same key: the resolved data settings (every DatasetConfig field,
root made absolute), the identity of the data files (path, size and mtime of every file under the root), the
autoencoder (architecture and a hash of its weights) and the encoding settings. The folder is named by a hash
of the key, and each split's manifest (<split>_manifest.json) holds the full key and the arrays' shapes, dtypes
and sizes; a split is checked against it on every read and encoded again into fresh files when anything
differs or a file is missing, truncated or unreadable. Arrays are read with allow_pickle=False: nothing in
the cache can run code. Each split is written under temporary names and renamed when complete, so a killed
run leaves no half-written split. Arrays are memory-mapped, so ImageNet-size caches need not fit in memory.
The train split is cached with its mirrored copies when the data set flips, so flips stay exact (the mirror
of a latent is not the latent of the mirror).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from main.datasets.common import SPLITS, MirrorPairs
from main.datasets.config import DatasetConfig
from main.datasets.datamodule import ImageDataModule
from main.models.autoencoder import autoencoder_spec, encode_images
from main.utils.errors import UserError
from main.utils.progress import progress_bar

log = logging.getLogger(__name__)

LATENT_DTYPE, LABEL_DTYPE = np.dtype(np.float32), np.dtype(np.int64)
# How images become cached arrays; part of the key, so changing any of it gives a new cache.
ENCODING = {"cache_version": 2, "latents": "posterior mean", "input": "uint8 / 127.5 - 1", "dtypes": [LATENT_DTYPE.name, LABEL_DTYPE.name]}


def autoencoder_fingerprint(autoencoder: nn.Module) -> str:
    """A short hash of the weights (names, dtypes, shapes and values)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(autoencoder.state_dict().items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def data_settings(config: DatasetConfig) -> dict:
    """Every field of the data set config, the root made absolute: all of them shape the images or their splits."""
    root = str(Path(config.root).expanduser().resolve()) if config.root is not None else None
    return dataclasses.asdict(config) | {"root": root}


def data_files_identity(root: str | None, skip: Path) -> dict:
    """Count, bytes and a hash of (relative path, size, mtime) of every file under the data root (or of the root file).

    Statting is cheap next to encoding and catches files added, removed, replaced or edited, where hashing the
    contents would read the whole data set on every run. Folders at ``skip`` (a cache kept inside the data root)
    are left out. A config without a root reads data bundled with a package: no files.
    """
    if root is None:
        return {"files": 0, "bytes": 0, "hash": None}
    base = Path(root).expanduser().resolve()
    paths = [base] if base.is_file() else []
    for dirpath, dirnames, filenames in os.walk(base, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if Path(dirpath, d).resolve() != skip)
        paths += [Path(dirpath, f) for f in sorted(filenames)]
    digest, total = hashlib.sha256(), 0
    for path in paths:
        try:
            stat = path.stat()
            size, stamp = stat.st_size, stat.st_mtime_ns
        except OSError:  # a dangling link: identified as such; the loader reports it if it reads it
            size, stamp = -1, -1
        total += max(size, 0)
        digest.update(f"{path.relative_to(base) if path != base else path.name}\0{size}\0{stamp}\n".encode())
    return {"files": len(paths), "bytes": total, "hash": digest.hexdigest()}


def cache_key(config: DatasetConfig, autoencoder: nn.Module, cache_root: Path) -> dict:
    """Everything the cached arrays depend on."""
    return {
        "data": data_settings(config),
        "data_files": data_files_identity(config.root, skip=cache_root),
        "autoencoder": {"weights": autoencoder_fingerprint(autoencoder), "architecture": autoencoder_spec(autoencoder)},
        "encoding": ENCODING,
    }


def canonical(value) -> str:
    return json.dumps(value, sort_keys=True, default=str)


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


class StaleSplit(Exception):
    """A cached split that does not match its manifest or the key: it is encoded again."""


class LatentCache:
    """The folder <root>/<data set>-<key hash>/ holding <split>_latents.npy, <split>_labels.npy, <split>_manifest.json.

    ``images`` is the data module whose splits are encoded, on ``device``, when a split is missing or stale.
    """

    def __init__(self, root: Path | str, images: ImageDataModule, autoencoder: nn.Module, device="cpu", batch_size: int = 64):
        self.images, self.autoencoder, self.device, self.batch_size = images, autoencoder, torch.device(device), batch_size
        root = Path(root).expanduser().resolve()
        self.key = cache_key(images.config, autoencoder, cache_root=root)
        self.key_text = canonical(self.key)
        self.folder = root / f"{images.config.name}-{hashlib.sha256(self.key_text.encode()).hexdigest()[:16]}"

    def paths(self, split: str) -> tuple[Path, Path, Path]:
        """(latents, labels, manifest) of a split."""
        return tuple(self.folder / f"{split}_{part}" for part in ("latents.npy", "labels.npy", "manifest.json"))

    def build(self, splits=SPLITS) -> LatentCache:
        """Encode every split not cached yet (or stale)."""
        for split in splits:
            self.arrays(split)
        return self

    def arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """The split's memory-mapped (latents, labels), checked against the manifest; encoded first if missing or stale."""
        try:
            return self._read(split)
        except StaleSplit as stale:
            if self.paths(split)[2].exists():
                log.warning("cached %s latents in '%s' are not usable (%s): encoding them again", split, self.folder, stale)
        self._encode(split)
        try:
            return self._read(split)
        except StaleSplit as stale:
            raise UserError(f"the {split} latents just written to '{self.folder}' do not read back ({stale}): check the disk") from None

    def _read(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        latents_path, labels_path, manifest_path = self.paths(split)
        try:
            manifest = json.loads(manifest_path.read_text())
            if canonical(manifest["key"]) != self.key_text:
                raise StaleSplit("its manifest has another key")
            latents = self._open(latents_path, LATENT_DTYPE, manifest["latents"])
            labels = self._open(labels_path, LABEL_DTYPE, manifest["labels"])
        except (OSError, ValueError, EOFError, KeyError, TypeError) as err:
            raise StaleSplit(f"{type(err).__name__}: {err}") from None
        if len(latents) != len(labels):
            raise StaleSplit("latents and labels differ in count")
        return latents, labels

    @staticmethod
    def _open(path: Path, dtype: np.dtype, expected: dict) -> np.ndarray:
        """Memory-map an array without unpickling anything, refusing one that differs from its manifest entry."""
        if path.stat().st_size != expected["bytes"]:
            raise StaleSplit(f"'{path.name}' has {path.stat().st_size} bytes, its manifest says {expected['bytes']}")
        array = np.load(path, mmap_mode="r", allow_pickle=False)
        found = {"shape": list(array.shape), "dtype": array.dtype.name, "bytes": expected["bytes"]}
        if array.dtype != dtype or found != expected:
            raise StaleSplit(f"'{path.name}' holds {array.dtype} {list(array.shape)}, its manifest says {expected}")
        return array

    def _encode(self, split: str) -> None:
        """Encode a split into fresh files renamed into place, then write its manifest: existing files are never modified."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self.autoencoder.to(self.device).eval()
        dataset = self.images.split(split)
        log.info("encoding the %s split (%d images) into '%s' on %s", split, len(dataset), self.folder, self.device)
        # Per-process temporary names: DDP ranks that encode the same split at once each rename complete files.
        tmp_latents, tmp_labels, tmp_manifest = (p.with_name(f"{p.stem}.partial-{os.getpid()}{p.suffix}") for p in self.paths(split))
        array, labels, start = None, np.empty(len(dataset), dtype=LABEL_DTYPE), 0
        with progress_bar(len(dataset), f"encoding the {split} split") as bar:
            for images, batch_labels in DataLoader(dataset, batch_size=self.batch_size):
                z = encode_images(self.autoencoder, images.to(self.device)).float().cpu().numpy()
                if array is None:
                    array = np.lib.format.open_memmap(tmp_latents, mode="w+", dtype=LATENT_DTYPE, shape=(len(dataset), *z.shape[1:]))
                array[start : start + len(z)] = z
                labels[start : start + len(z)] = batch_labels.numpy()
                start += len(z)
                bar.update(len(z))
        if array is None:
            raise UserError(f"the {split} split is empty: nothing to encode")
        array.flush()
        np.save(tmp_labels, labels, allow_pickle=False)
        manifest = {"key": self.key}
        for name, values, tmp in (("latents", array, tmp_latents), ("labels", labels, tmp_labels)):
            manifest[name] = {"shape": list(values.shape), "dtype": values.dtype.name, "bytes": tmp.stat().st_size}
        del array
        tmp_manifest.write_text(json.dumps(manifest, indent=1, sort_keys=True, default=str))
        latents_path, labels_path, manifest_path = self.paths(split)
        for tmp, final in ((tmp_latents, latents_path), (tmp_labels, labels_path), (tmp_manifest, manifest_path)):
            os.replace(tmp, final)

    def split(self, split: str) -> Dataset:
        cached = CachedLatents(*self.arrays(split))
        return CachedMirrorPairs(cached) if split == "train" and self.images.config.flip else cached

    def statistics(self, chunk: int = 4096) -> tuple[float, float]:
        """(shift, scale): mean and standard deviation of every train latent element, in float64 chunks."""
        latents = self.arrays("train")[0]
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
