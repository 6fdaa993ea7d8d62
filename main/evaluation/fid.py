"""FID (and KID, Inception Score, precision/recall) of image sets against a reference, with torch-fidelity's network and maths.

`load_reference` reads the image sets main/fid.py takes (a folder of images, an .npz, or `<dataset>-<split>`); `Scorer`
extracts their Inception features, caches the reference's, and scores. They serve main/fid.py, the training-time callback
(main/callbacks/fid_metrics.py) and test_ddpm.py's speed_quality task, so every FID in the project is computed the same way."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from torch.utils.data import Dataset, Subset
from torchvision.io import ImageReadMode, decode_image, read_file

from main.models import inception
from main.utils.errors import UserError
from main.utils.feature_cache import FeatureCache
from main.utils.progress import progress_bar

ROOT = Path(__file__).resolve().parents[2]
DATASET_CONFIGS = ROOT / "main" / "configs" / "dataset"
METRICS = ("fid", "kid", "isc", "prc")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
DEFAULT_CACHE = ROOT / "outputs" / "fid_cache"  # reference features, shared by fid.py, the training callback and speed_quality
# torch-fidelity's result keys -> ours.
KEYS = {
    "frechet_inception_distance": "fid",
    "kernel_inception_distance_mean": "kid_mean",
    "kernel_inception_distance_std": "kid_std",
    "inception_score_mean": "is_mean",
    "inception_score_std": "is_std",
    "precision": "precision",
    "recall": "recall",
    "f_score": "f_score",
}


# ---------------------------------------------------------------- inputs: uint8 [3, H, W] tensors


class RGBImages(Dataset):
    """uint8 [3, H, W] images (grayscale repeated to 3 channels), what torch-fidelity takes for in-memory inputs.

    Wraps a uint8 NCHW tensor, a folder's files (decoded on access), or a data set of (image, label) pairs.
    `channels` is the inputs' own channel count (1 or 3), checked against the other input.
    """

    def __init__(self, items, channels: int, describe: str):
        self.items, self.channels, self.describe = items, channels, describe

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> torch.Tensor:
        item = self.items[index]
        if isinstance(item, Path):
            item = decode_image(read_file(str(item)), mode=ImageReadMode.UNCHANGED)
            item = item[:3] if item.shape[0] >= 3 else item[:1]  # drop alpha
        elif isinstance(item, tuple | list):
            item = item[0]
        if item.shape[0] == 1:
            item = item.repeat(3, 1, 1)
        return item.contiguous()


def _image_channels(path: Path) -> int:
    image = decode_image(read_file(str(path)), mode=ImageReadMode.UNCHANGED)
    return 3 if image.shape[0] >= 3 else 1


def load_path(path: Path, role: str) -> RGBImages:
    """A folder of PNG/JPEG images or an .npz with `images`, as `RGBImages`."""
    if path.is_dir():
        files = sorted(f for f in path.iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file())
        if not files:
            raise UserError(f"no .png/.jpg images in {role} folder '{path}': pass a folder of images or an .npz with an 'images' array")
        return RGBImages(files, _image_channels(files[0]), f"{len(files)} images in '{path}'")
    if path.is_file() and path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as archive:
            if "images" not in archive:
                raise UserError(f"'{path}' has no 'images' array (it has: {', '.join(archive.files)}): save them as images=<NHWC uint8>")
            array = archive["images"]
        if array.dtype != np.uint8 or array.ndim not in (3, 4) or len(array) == 0 or (array.ndim == 4 and array.shape[-1] not in (1, 3)):
            raise UserError(f"'{path}': 'images' is {array.dtype} {array.shape}: expected a non-empty uint8 (N, H, W[, 1 or 3]) array")
        array = array[..., None] if array.ndim == 3 else array
        images = torch.from_numpy(np.ascontiguousarray(array.transpose(0, 3, 1, 2)))
        return RGBImages(images, images.shape[1], f"{len(images)} images in '{path}'")
    if not path.exists():
        raise UserError(f"{role} '{path}' does not exist: pass a folder of images or an .npz file with an 'images' array")
    raise UserError(f"{role} '{path}' is neither a folder of images nor an .npz file")


def dataset_names() -> list[str]:
    return sorted(p.stem for p in DATASET_CONFIGS.glob("*.yaml") if not p.stem.startswith("_"))


def split_images(dataset_cfg, split: str) -> tuple[RGBImages, str]:
    """A split of a data set config (main/configs/dataset/ keys; no flips), and the name its cached features go under.

    The name holds a digest of the whole config (root made absolute), so features of another root, size or split rule never mix.
    """
    from main.datasets import build_datamodule
    from main.datasets.common import SPLITS
    from main.datasets.config import DatasetConfig

    config = dataclasses.replace(DatasetConfig.parse(dataset_cfg), flip=False)
    if split not in SPLITS:
        raise UserError(f"unknown split '{split}' of data set '{config.name}': use one of {', '.join(SPLITS)}")
    data = build_datamodule(config, batch_size=1).split(split)
    if len(data) == 0:
        raise UserError(f"split '{split}' of data set '{config.name}' is empty: check dataset.root")
    key = dataclasses.asdict(config) | {"root": str(Path(config.root).expanduser().absolute()) if config.root else None}
    name = f"{config.name}-{split}"
    return RGBImages(data, config.channels, f"{len(data)} images of {name}"), f"{name}-{_digest(json.dumps(key, sort_keys=True))}"


def load_dataset_split(reference: str, data_root: str | None) -> tuple[RGBImages, str]:
    """`<dataset>-<split>` read with main/configs/dataset/<dataset>.yaml (flat files, so no Hydra: callable inside a Hydra app)."""
    from main.datasets.common import SPLITS

    name, _, split = reference.rpartition("-")
    if split not in SPLITS or name not in dataset_names():
        raise UserError(
            f"unknown reference '{reference}': pass an image folder, an .npz with 'images', or <dataset>-<split> "
            f"with dataset one of {', '.join(dataset_names())} and split one of {', '.join(SPLITS)}"
        )
    cfg = OmegaConf.load(DATASET_CONFIGS / f"{name}.yaml")
    if data_root is not None:
        cfg.root = data_root
    try:
        return split_images(cfg, split)
    except UserError as err:
        raise UserError(f"{err} (for fid.py: --data-root <path>)") from None


def load_reference(reference: str, data_root: str | None = None, dataset_cfg=None) -> tuple[RGBImages, str]:
    """The reference images and the name their cached features are stored under.

    `dataset_cfg` (a run's data set config) serves `<its name>-<split>` with its own root and settings.
    """
    path = Path(reference).expanduser()
    if path.exists() or path.suffix == ".npz" or os.sep in reference:
        images = load_path(path, "reference")
        return images, _path_cache_name(path, images)
    name, _, split = reference.rpartition("-")
    if dataset_cfg is not None and name == dataset_cfg["name"]:
        return split_images(dataset_cfg, split)
    return load_dataset_split(reference, data_root)


def torch_fidelity_version() -> str:
    from importlib.metadata import version

    return version("torch-fidelity")


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def _path_cache_name(path: Path, images: RGBImages) -> str:
    """Name + digest of the absolute path, image count and modification time: a changed folder or file is recomputed."""
    stat = path.stat()
    return f"{path.stem or 'reference'}-{_digest(f'{path.resolve()}|{len(images)}|{stat.st_mtime_ns}')}"


# ---------------------------------------------------------------- metrics


def parse_metrics(value: str | list[str], setting: str = "--metrics") -> list[str]:
    """'fid,kid' or ['fid', 'kid'] -> checked metric names ('is' is accepted for 'isc')."""
    names = [m.strip().lower() for m in (value.split(",") if isinstance(value, str) else value) if m.strip()]
    names = ["isc" if m == "is" else m for m in names]
    unknown = [m for m in names if m not in METRICS]
    if unknown or not names:
        raise UserError(f"unknown metric(s) {', '.join(unknown) or '(none)'} in {setting}: choose from {','.join(METRICS)}")
    return names


def check_pair(samples: RGBImages, reference: RGBImages) -> None:
    """Both grayscale or both RGB (made 3-channel alike), and at least 2 images each (FID's covariances)."""
    if samples.channels != reference.channels:
        kind = {1: "grayscale", 3: "RGB"}
        raise UserError(
            f"samples are {kind.get(samples.channels, samples.channels)} ({samples.describe}) but the reference is "
            f"{kind.get(reference.channels, reference.channels)} ({reference.describe}): compare images of the same data set"
        )
    if len(samples) < 2 or len(reference) < 2:
        raise UserError(f"got {len(samples)} sample(s) and {len(reference)} reference image(s): FID needs at least 2 of each")


class Scorer:
    """FID (and KID, IS, precision/recall) of image sets against one reference, with torch-fidelity's network and maths.

    We extract the features ourselves and cache the reference's in a FeatureCache (never through torch-fidelity's
    cache, which unpickles whatever file sits under a predictable name). What fid.py, the training-time callback
    and test_ddpm.py's speed_quality task share, so their numbers agree.
    """

    def __init__(
        self,
        reference: RGBImages,
        reference_name: str,
        metrics: list[str],
        weights: str | None = None,
        cache: str | Path = DEFAULT_CACHE,
        batch_size: int = 64,
        kid_subset_size: int = 1000,
        kid_subsets: int = 100,
        verbose: bool = False,
    ):
        self.reference, self.metrics = reference, metrics
        self.weights = inception.resolve_weights(weights)
        state = inception.load_weights(self.weights)
        if "isc" in metrics and not inception.has_classifier(state):
            raise UserError(
                "the Inception Score needs the network's 1008-class head, which the offline FID network does not have: "
                f"pass torch-fidelity's own weights with --weights <file> ({inception.WEIGHTS_URL})"
            )
        self.layers = [inception.FEATURES] + ([inception.LOGITS] if "isc" in metrics else [])
        with torch.random.fork_rng(devices=[]):  # the network is built with random init first: keep the caller's stream
            self.network = inception.InceptionV3(state, self.layers)
        self.cache = FeatureCache(cache)
        self.reference_name = reference_name
        self.network_key = {
            "network": inception.NAME,
            "weights_sha1": inception.sha1_of(self.weights),
            "torch_fidelity": torch_fidelity_version(),
        }
        self.batch_size, self.kid_subset_size, self.kid_subsets, self.verbose = batch_size, kid_subset_size, kid_subsets, verbose

    def features(self, images: RGBImages, device: torch.device, what: str) -> dict[str, np.ndarray]:
        """The network's outputs for every image, in order, with a progress bar."""
        self.network.to(device)
        # batches by hand: a DataLoader's iterator draws a seed from the global RNG, which the caller's training owns
        starts = range(0, len(images), self.batch_size)
        batches = (torch.stack([images[i] for i in range(s, min(s + self.batch_size, len(images)))]) for s in starts)
        outputs: dict[str, list[np.ndarray]] = {layer: [] for layer in self.layers}
        with torch.no_grad(), progress_bar(len(images), f"Inception features of {what}", self.verbose) as bar:
            for batch in batches:
                for layer, value in zip(self.layers, self.network(batch.to(device)), strict=True):
                    outputs[layer].append(value.float().cpu().numpy())
                bar.update(len(batch))
        return {layer: np.concatenate(values) for layer, values in outputs.items()}

    def cached_features(self, images: RGBImages, name: str, device: torch.device) -> dict[str, np.ndarray]:
        """Features of a named image set (a data split or a file) from the cache, extracted in resumable chunks on a miss."""
        key = self.network_key | {"images": name, "n": len(images)}
        return self.cache.get_or_build(
            f"{name}-{_digest(json.dumps(key, sort_keys=True))}",
            key,
            self.layers,
            len(images),
            lambda indices: self.features(Subset(images, indices), device, f"{images.describe} [{indices[0]}:{indices[-1] + 1}]"),
        )

    def __call__(self, samples: RGBImages | torch.Tensor, cuda: bool = False, samples_name: str | None = None) -> dict:
        """Metrics under our names (fid, kid_mean, kid_std, ...; kid_subset_size with kid). samples: or uint8 [N, C, H, W].

        ``samples_name`` (a name that changes when the images do) caches the samples' features too.
        """
        from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
        from torch_fidelity.metric_isc import isc_features_to_metric
        from torch_fidelity.metric_kid import kid_features_to_metric
        from torch_fidelity.metric_prc import prc_features_to_metric

        if isinstance(samples, torch.Tensor):
            samples = RGBImages(samples.cpu(), samples.shape[1], f"{len(samples)} generated images")
        check_pair(samples, self.reference)
        device = torch.device("cuda" if cuda else "cpu")
        real = self.cached_features(self.reference, self.reference_name, device)
        fake = self.cached_features(samples, samples_name, device) if samples_name else self.features(samples, device, samples.describe)
        real, fake = ({k: torch.from_numpy(v) for k, v in features.items()} for features in (real, fake))
        feats_fake, feats_real = fake[inception.FEATURES], real[inception.FEATURES]
        raw: dict = {}
        if "fid" in self.metrics:
            stats = fid_features_to_statistics(feats_fake), fid_features_to_statistics(feats_real)
            raw |= fid_statistics_to_metric(*stats, verbose=False)
        kid_subset_size = min(self.kid_subset_size, len(samples), len(self.reference))
        if "kid" in self.metrics:
            raw |= kid_features_to_metric(
                feats_fake, feats_real, kid_subsets=self.kid_subsets, kid_subset_size=kid_subset_size, verbose=False
            )
        if "isc" in self.metrics:
            raw |= isc_features_to_metric(fake[inception.LOGITS], splits=min(10, len(samples)))
        if "prc" in self.metrics:
            raw |= prc_features_to_metric(feats_fake, feats_real, save_cpu_ram=not cuda, verbose=False)
        metrics: dict = {KEYS.get(k, k): float(v) for k, v in raw.items()}
        if "kid" in self.metrics:
            metrics["kid_subset_size"] = kid_subset_size
        return metrics
