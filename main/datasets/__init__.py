"""Data sets for image generation, served as uint8 [C, H, W] images with an int label (-1 if unlabelled).

`build_datamodule(cfg, batch_size, ...)` takes a `configs/dataset/<name>.yaml` entry and
dispatches on its `format` key (or on `name` for the bundled configs). Images are never
normalised here; the model does that on the device with `pixel_mean`/`pixel_std`/`bits`.

Fixed splits. None depends on the training seed: held-out images come from permutations with
the constant `common.SPLIT_SEED` or from md5 hashes of file paths. The seed only shuffles the
training order (and the random flips of `flip: true`, applied to the train split only).
"perm." = permutation with SPLIT_SEED; "hash" = md5 of the file's path relative to the split folder.

| format   | data sets                          | train               | val                 | test                  |
|----------|------------------------------------|---------------------|---------------------|-----------------------|
| digits   | digits (sklearn, 1797 images)      | other 1437          | 180 by perm.        | 180 by perm.          |
| cifar10  | cifar10                            | other 45000         | 5000 train, perm.   | official test (10000) |
| imagenet | imagenet32, imagenet64             | other 1271167       | 10000 train, perm.  | val_data.npz (50000)  |
| folder   | celeba64 (list_eval_partition.txt) | official 0 (162770) | official 1 (19867)  | official 2 (19962)    |
| folder   | afhq (train/ + test/)              | train/ minus val    | 5% of train/, hash  | test/                 |
| folder   | celebahq256 ffhq* lsun_* folder    | other ~90%          | 5% by hash          | 5% by hash            |
| npz      | npz                                | other 90%           | 5% by perm.         | 5% by perm.           |

Folders with `train/` and `val/`/`test/` subfolders and npz folders with `*train*`/`*test*`
files use those instead; the module docstrings of `folder` and `npz` give the exact rules.
"""

from main.datasets.datamodule import ImageDataModule, build_datamodule, first_images

__all__ = ["ImageDataModule", "build_datamodule", "first_images"]
