"""Image folders (CelebA, CelebA-HQ, FFHQ, exported LSUN, AFHQ, any tree), decoded lazily with PIL.

Files: .png .jpg .jpeg .webp .bmp anywhere under `dataset.root` (hidden files and folders are
skipped). Each image is converted to RGB (or L for channels=1), center-cropped to `center_crop`
if set (CelebA-64 uses 148), and, unless already image_size x image_size, resized so its
shorter side is image_size (bicubic, antialiased) and center-cropped to a square.

Splits, by the first rule that applies:
1. `train/` plus `test/` and/or `val/` under root are used as given. With only one of `test/`
   and `val/`, that folder is the test split and val is carved out of `train/` by the hash rule.
2. `split_file` (CelebA's `list_eval_partition.txt`: `<file name> <0|1|2>` for train/val/test)
   found in root: used for every listed file; unlisted files are left out.
3. Hash rule: a file's md5 of its path relative to the split folder gives h in [0, 1);
   test if h < test_size, val if h < test_size + val_size, else train (fractions; 5% + 5% by
   default). It does not depend on the seed or on which other files exist.
Labels (`class_folders: true`): index of the first-level subfolder name, sorted, of the train
folder (rule 1) or of root; other splits must use the same class names. Otherwise labels are -1.

Unreadable files: with `verify_files` every file of a split is opened and `verify()`d when the
split is built; with on_bad_file=skip bad ones are dropped and counted, with error the first one
is reported. Files that still fail to decode when loaded are reported, or with skip replaced by
the next readable image of the split (counted per process in a warning).
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.v2.functional as F
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import InterpolationMode

from main.datasets.common import SPLITS
from main.datasets.config import DatasetConfig
from main.utils.errors import UserError

log = logging.getLogger(__name__)

EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
BAD_IMAGE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def list_images(folder: Path) -> list[str]:
    """Sorted POSIX paths, relative to `folder`, of the image files below it."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel = Path(dirpath).relative_to(folder)
        found += [(rel / f).as_posix() for f in filenames if not f.startswith(".") and f.lower().endswith(EXTENSIONS)]
    return sorted(found)


def hash_fraction(relative_path: str) -> float:
    """A fixed pseudo-random number in [0, 1) for a file, from the md5 of its relative path."""
    return int.from_bytes(hashlib.md5(relative_path.encode()).digest()[:8], "big") / 2**64


def load_image(path: Path, size: int, mode: str, crop: int | None) -> torch.Tensor:
    """Decode, crop and resize one file to a uint8 [C, size, size] tensor."""
    with Image.open(path) as image:
        image = image.convert(mode)
    if crop:
        image = F.center_crop(image, [crop, crop])
    if image.size != (size, size):
        image = F.resize(image, [size], interpolation=InterpolationMode.BICUBIC, antialias=True)
        image = F.center_crop(image, [size, size])
    return F.pil_to_tensor(image)


def is_readable(path: Path) -> bool:
    """Cheap integrity check: PIL can identify the file and its `verify()` passes."""
    try:
        with Image.open(path) as image:
            image.verify()
        return True
    except BAD_IMAGE_ERRORS:
        return False


class ImageFolderDataset(Dataset):
    def __init__(self, base: Path, files: list[str], labels: list[int], cfg: DatasetConfig):
        self.base = base
        # numpy arrays instead of lists of Python objects, so forked workers do not copy them.
        self.files, self.labels = np.array(files), np.array(labels, dtype=np.int64)
        self.size, self.mode, self.crop = cfg.image_size, "RGB" if cfg.channels == 3 else "L", cfg.center_crop
        self.skip_bad = cfg.on_bad_file == "skip"
        self.skipped = 0

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        for offset in range(len(self)):
            i = (index + offset) % len(self)
            path = self.base / str(self.files[i])
            try:
                return load_image(path, self.size, self.mode, self.crop), int(self.labels[i])
            except BAD_IMAGE_ERRORS as err:
                if not self.skip_bad:
                    raise UserError(f"cannot read image '{path}' ({err}): remove it or set dataset.on_bad_file=skip") from None
                self.skipped += 1
                log.warning("skipped unreadable image '%s' (%d in this process so far)", path, self.skipped)
        raise UserError(f"no readable image in '{self.base}': check the files")


class FolderSource:
    def __init__(self, cfg: DatasetConfig):
        self.cfg = cfg
        self.root = cfg.existing_root()
        if not self.root.is_dir():
            raise UserError(f"data root '{self.root}' is not a folder: set dataset.root to a folder of images")
        if cfg.num_classes and not cfg.class_folders:
            raise UserError(
                f"dataset.num_classes={cfg.num_classes} but labels come only from class folders: "
                "set dataset.class_folders=true or dataset.num_classes=0"
            )
        self._parts: dict[str, tuple[Path, list[str]]] | None = None
        self._classes: dict[str, int] = {}

    def split(self, name: str) -> Dataset:
        if self._parts is None:
            self._parts = self._scan()
        base, files = self._parts[name]
        if not files:
            fix = "add images to it" if name == "train" else f"add images or raise dataset.{name}_size"
            raise UserError(f"the {name} split of '{self.root}' has no images: {fix}")
        if self.cfg.verify_files:
            files = self._verified(name, base, files)
        labels = [self._label(base, f) for f in files]
        log.info("%s split: %d images from '%s'", name, len(files), base)
        return ImageFolderDataset(base, files, labels, self.cfg)

    def _scan(self) -> dict[str, tuple[Path, list[str]]]:
        split_dirs = [s for s in SPLITS if (self.root / s).is_dir()]
        if "train" in split_dirs and len(split_dirs) > 1:
            parts = {s: (self.root / s, list_images(self.root / s)) for s in split_dirs}
            class_base, class_pool = parts["train"]
            if len(parts) == 2:  # the one held-out folder is the test split; val comes from train/
                parts["test"] = parts.pop("val" if "val" in parts else "test")
                base, files = parts["train"]
                val = self._fraction("val_size")
                parts["train"] = (base, [f for f in files if hash_fraction(f) >= val])
                parts["val"] = (base, [f for f in files if hash_fraction(f) < val])
        else:
            class_base, class_pool = self.root, list_images(self.root)
            parts = {s: (self.root, f) for s, f in self._split_all(class_pool).items()}
        if not any(files for _, files in parts.values()):
            self._raise_no_images()
        if self.cfg.class_folders:
            self._classes = self._find_classes(class_base, class_pool)
        return parts

    def _split_all(self, files: list[str]) -> dict[str, list[str]]:
        split_file = self.root / self.cfg.split_file if self.cfg.split_file else None
        if split_file is not None and split_file.is_file():
            assigned = read_split_file(split_file)
            parts = {s: [f for f in files if assigned.get(Path(f).name) == s] for s in SPLITS}
            if unlisted := len(files) - sum(map(len, parts.values())):
                log.warning("%d image(s) are not listed in '%s' and are left out", unlisted, split_file)
            return parts
        if split_file is not None:
            log.warning("split file '%s' not found: splitting by path hash instead", split_file)
        test, val = self._fraction("test_size"), self._fraction("val_size")
        parts = {s: [] for s in SPLITS}
        for f in files:
            h = hash_fraction(f)
            parts["test" if h < test else "val" if h < test + val else "train"].append(f)
        return parts

    def _fraction(self, key: str) -> float:
        value = getattr(self.cfg, key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
            raise UserError(f"dataset.{key}={value!r} cannot split an image folder by hash: use a fraction in [0, 1), e.g. 0.05")
        return float(value)

    def _find_classes(self, base: Path, files: list[str]) -> dict[str, int]:
        loose = next((f for f in files if "/" not in f), None)
        if loose is not None:
            raise UserError(f"'{base / loose}' is not inside a class folder: move it into <class name>/ or set dataset.class_folders=false")
        names = sorted({f.split("/", 1)[0] for f in files})
        if len(names) != self.cfg.num_classes:
            raise UserError(
                f"found {len(names)} class folders ({', '.join(names[:8])}) in '{base}' but "
                f"dataset.num_classes={self.cfg.num_classes}: set dataset.num_classes={len(names)}"
            )
        return {name: index for index, name in enumerate(names)}

    def _label(self, base: Path, file: str) -> int:
        if not self.cfg.class_folders:
            return -1
        name = file.split("/", 1)[0]
        if name not in self._classes:
            raise UserError(
                f"'{base / file}' is in class folder '{name}', which the train split lacks "
                f"(classes: {', '.join(self._classes)}): rename or remove that folder"
            )
        return self._classes[name]

    def _verified(self, name: str, base: Path, files: list[str]) -> list[str]:
        bad = [f for f in files if not is_readable(base / f)]
        if bad and self.cfg.on_bad_file == "error":
            raise UserError(
                f"{len(bad)} unreadable image file(s) in the {name} split, e.g. '{base / bad[0]}': "
                "remove them or set dataset.on_bad_file=skip"
            )
        if bad:
            log.warning("skipping %d unreadable image file(s) in the %s split, e.g. '%s'", len(bad), name, base / bad[0])
            files = sorted(set(files) - set(bad))
        return files

    def _raise_no_images(self) -> None:
        root = self.root
        if not any(root.iterdir()):
            raise UserError(f"data root '{root}' is empty: put the images there or set dataset.root=<path>")
        if (root / "data.mdb").exists() or any(root.glob("*/data.mdb")):
            raise UserError(
                f"'{root}' holds an LMDB database (data.mdb), which is not read directly: export it "
                "to image files (e.g. LSUN's `data.py export`) and set dataset.root to that folder"
            )
        raise UserError(f"no image files ({' '.join(EXTENSIONS)}) under '{root}': set dataset.root to a folder of images")


def read_split_file(path: Path) -> dict[str, str]:
    """File name -> split name, from lines `<file name> <0|1|2>` (CelebA's list_eval_partition.txt)."""
    assigned = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
            raise UserError(f"{path}:{number}: expected '<file name> <0|1|2>', got {line!r}: fix the split file")
        assigned[fields[0]] = SPLITS[int(fields[1])]
    return assigned
