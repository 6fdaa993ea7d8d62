"""What the evaluation entry points share: device choice, seeds per batch, and sharded, staged image folders.

Generation is split into batches; batch b (images start..start+count) is drawn with a generator seeded
by (seed, start) and belongs to rank b mod world_size. So the images are the same whatever the number
of devices, each rank writes only its own files, and a folder appears under its final name only when
every rank has finished (it is written as ``.<name>.partial`` first).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torchvision.io import decode_png, read_file

from main.utils.errors import UserError, check_seed
from main.utils.image_io import check_writable, finish_staging, save_pngs, start_staging
from main.utils.progress import progress_bar

OmegaConf.register_new_resolver("run_dir_of", lambda ckpt: str(Path(ckpt).parent.parent), replace=True)


def dataset_config(trained, overrides) -> DictConfig:
    """The checkpoint's data set config with the command line's ``dataset.*`` overrides; null ones keep the checkpoint's."""
    given = {key: value for key, value in OmegaConf.to_container(overrides, resolve=True).items() if value is not None}
    return OmegaConf.merge(trained, given)


def pick_device(name: str) -> torch.device:
    """The device of a ``device=`` setting: auto (cuda if available), cpu, cuda, cuda:1, ... that this machine has."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise UserError(f"device={name!r} is not a device: use auto, cpu, cuda or cuda:<index>") from None
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if device.type == "cuda" and (device.index or 0) >= count:
        raise UserError(f"device={name} is not on this machine, which has {count} CUDA device(s): use device=auto or device=cpu")
    return device


def check_settings(cfg: DictConfig, *keys: str, nullable: Sequence[str] = ()) -> None:
    """Refuse in one line the settings every evaluation has that would fail deep inside or write nothing: a seed the
    generators cannot take, and a count at ``keys`` below 1 (images, batch size, draws); keys in ``nullable`` may be
    null too (all)."""
    check_seed(cfg.seed)
    for key in keys:
        value = OmegaConf.select(cfg, key)
        if value is None and key in nullable:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            also = " or null (all)" if key in nullable else ""
            raise UserError(f"{key}={value} is not valid: use a positive whole number{also}")


def batch_generator(seed: int, start: int, device) -> torch.Generator:
    """The generator of the batch that starts at image ``start``: the same command draws the same images."""
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + start)


def in_batches(n: int, batch_size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, n, batch_size):
        yield start, min(batch_size, n - start)


@dataclass
class Shard:
    """This process's share of the work: rank of world_size, and a barrier across the ranks."""

    rank: int = 0
    world_size: int = 1
    barrier: Callable[[], None] = lambda: None

    def batches(self, n: int, batch_size: int) -> Iterator[tuple[int, int]]:
        for index, batch in enumerate(in_batches(n, batch_size)):
            if index % self.world_size == self.rank:
                yield batch


def read_pngs(folder: Path) -> torch.Tensor:
    """folder/000000.png, ... -> uint8 [N, C, H, W] in file order."""
    return torch.stack([decode_png(read_file(str(path))) for path in sorted(folder.glob("*.png"))])


def generate_to(
    folders: dict[str, Path],
    n: int,
    batch_size: int,
    draw: Callable[[int, int], dict[str, torch.Tensor]],
    overwrite: bool,
    shard: Shard | None = None,
) -> tuple[dict[str, torch.Tensor] | None, float]:
    """Call draw(start, count) -> {name: uint8 images} for this rank's batches, writing PNGs to folders[name].

    Returns (on rank 0: all ranks' images per name, read back from the files; elsewhere None), wall seconds.
    """
    shard = shard or Shard()
    for folder in folders.values():
        check_writable(folder, overwrite)
    stagings = {name: start_staging(folder, create=shard.rank == 0) for name, folder in folders.items()}
    shard.barrier()
    start_time = time.perf_counter()
    batches = list(shard.batches(n, batch_size))
    with progress_bar(sum(count for _, count in batches), next(iter(folders)), enabled=shard.rank == 0) as bar:  # its share
        for start, count in batches:
            for name, images in draw(start, count).items():
                save_pngs(images, stagings[name], start)
            bar.update(count)
    shard.barrier()
    seconds = time.perf_counter() - start_time
    if shard.rank != 0:
        return None, seconds
    images = {name: read_pngs(staging) for name, staging in stagings.items()}
    for name, staging in stagings.items():
        finish_staging(staging, folders[name])
    return images, seconds
