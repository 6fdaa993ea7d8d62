"""FID (and on request KID, Inception Score, precision/recall) of generated images, with torch-fidelity.

    python main/fid.py outputs/run/samples cifar10-train
    python main/fid.py samples.npz data/ref_pngs --metrics fid,kid,isc,prc --weights ~/weights-inception.pth

`samples`: a folder of images (PNG/JPEG, not recursive) or an .npz with `images` (N, H, W[, C]) uint8.
`reference`: the same, or a data set split `<dataset>-<split>` (cifar10-train, cifar10-test, digits-test, ...)
read through `main/configs/dataset/<dataset>.yaml` (`--data-root` sets its root; no flips).
The reference's Inception features are cached in `--cache` under a name derived from the reference and the
weights file, so later runs against it only process the samples. Writes the metrics to `--json`
(default: fid.json next to the samples) with the results.json schema.

`Scorer` and `load_reference` also serve the training-time callback (main/callbacks/fid_metrics.py) and
test_ddpm.py's speed_quality task, so every FID in the project is computed the same way.
"""

from __future__ import annotations

try:  # first: puts the repository on sys.path
    from main import _bootstrap  # noqa: F401  (run as a package)
except ModuleNotFoundError:
    import _bootstrap  # noqa: F401  (run as `python main/<entry>.py`)
import argparse
import dataclasses
import hashlib
import json
import os
import socket
import sys
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from torch.utils.data import Dataset
from torchvision.io import ImageReadMode, decode_image, read_file

from main.utils.errors import UserError, exit_on_user_error
from main.utils.results import write_results

ROOT = Path(__file__).resolve().parent.parent
DATASET_CONFIGS = ROOT / "main" / "configs" / "dataset"
FEATURE_EXTRACTOR = "inception-v3-compat"
# What torch-fidelity downloads for inception-v3-compat (torch_fidelity.feature_extractor_inceptionv3.URL_INCEPTION_V3).
WEIGHTS_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
METRICS = ("fid", "kid", "isc", "prc")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
DEFAULT_CACHE = ROOT / "outputs" / "fid_cache"  # reference features, shared by fid.py, the training callback and speed_quality
FULL_COUNT = 50_000
SMALL_NOTE = (
    "FID is biased upward below 50,000 samples: compare only values computed with the same number of samples (and the same reference)."
)
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


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def _path_cache_name(path: Path, images: RGBImages) -> str:
    """Name + digest of the absolute path, image count and modification time: a changed folder or file is recomputed."""
    stat = path.stat()
    return f"{path.stem or 'reference'}-{_digest(f'{path.resolve()}|{len(images)}|{stat.st_mtime_ns}')}"


# ---------------------------------------------------------------- Inception weights


def _fetch_hint() -> str:
    return f"download {WEIGHTS_URL} and pass it with --weights <file> (or put it in {default_weights_path().parent}/)"


def default_weights_path() -> Path:
    """Where torch-fidelity's own download lands (torch hub's checkpoint folder)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(WEIGHTS_URL)


def resolve_weights(weights: str | None) -> Path:
    """A checked local weights file: the given one, or torch hub's copy (downloaded now if missing and online)."""
    if weights is None:
        path = default_weights_path()
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            previous = socket.getdefaulttimeout()
            socket.setdefaulttimeout(30)
            try:
                print(f"downloading the Inception weights to {path} ...", file=sys.stderr)
                torch.hub.download_url_to_file(WEIGHTS_URL, str(path), progress=False)
            except Exception as err:  # offline, proxy, DNS, HTTP errors: all mean the same fix
                raise UserError(f"cannot download the Inception weights ({type(err).__name__}): {_fetch_hint()}") from None
            finally:
                socket.setdefaulttimeout(previous)
    else:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise UserError(f"Inception weights file '{path}' does not exist: {_fetch_hint()}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        ok = isinstance(state, dict) and tuple(state["fc.weight"].shape) == (1008, 2048)
    except Exception:  # truncated download, wrong file
        ok = False
    if not ok:
        raise UserError(f"'{path}' is not torch-fidelity's {FEATURE_EXTRACTOR} weights file (corrupt or wrong file): {_fetch_hint()}")
    return path


def weights_tag(path: Path) -> str:
    """A short fingerprint of the weights file, so cached features of different weights never mix."""
    digest = hashlib.sha1(str(path.stat().st_size).encode())
    with open(path, "rb") as f:
        digest.update(f.read(1 << 20))
        f.seek(max(0, path.stat().st_size - (1 << 20)))
        digest.update(f.read())
    return digest.hexdigest()[:8]


# ---------------------------------------------------------------- metrics


def parse_metrics(value: str | list[str], setting: str = "--metrics") -> list[str]:
    """'fid,kid' or ['fid', 'kid'] -> checked torch-fidelity metric names ('is' is accepted for 'isc')."""
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
    """torch-fidelity's metrics of image sets against one reference: weights checked once, reference features cached on disk.

    What fid.py, the training-time callback and test_ddpm.py's speed_quality task share, so their numbers agree.
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
        self.reference, self.metrics, self.cache = reference, metrics, Path(cache).expanduser()
        self.weights = resolve_weights(weights)
        self.cache_name = f"{reference_name}-w{weights_tag(self.weights)}"
        self.batch_size, self.kid_subset_size, self.kid_subsets, self.verbose = batch_size, kid_subset_size, kid_subsets, verbose

    def __call__(self, samples: RGBImages | torch.Tensor, cuda: bool = False) -> dict:
        """Metrics under our names (fid, kid_mean, kid_std, ...; kid_subset_size with kid). samples: or uint8 [N, C, H, W]."""
        import torch_fidelity

        if isinstance(samples, torch.Tensor):
            samples = RGBImages(samples.cpu(), samples.shape[1], f"{len(samples)} generated images")
        check_pair(samples, self.reference)
        kid_subset_size = min(self.kid_subset_size, len(samples), len(self.reference))
        # torch-fidelity builds Inception with random init before loading the weights: keep the caller's random stream
        with torch.random.fork_rng(devices=[torch.cuda.current_device()] if cuda else []):
            raw = torch_fidelity.calculate_metrics(
                input1=samples,
                input2=self.reference,
                cuda=cuda,
                batch_size=self.batch_size,
                feature_extractor=FEATURE_EXTRACTOR,  # also for prc (torch-fidelity's default there is VGG16, a second download)
                feature_extractor_weights_path=str(self.weights),
                cache_root=str(self.cache),
                input2_cache_name=self.cache_name,
                kid_subset_size=kid_subset_size,
                kid_subsets=self.kid_subsets,
                isc_splits=min(10, len(samples)),
                save_cpu_ram=not cuda,  # no DataLoader workers competing with the CPU threads
                verbose=self.verbose,
                **{m: True for m in self.metrics},
            )
        metrics: dict = {KEYS.get(k, k): float(v) for k, v in raw.items()}
        if "kid" in self.metrics:
            metrics["kid_subset_size"] = kid_subset_size
        return metrics


def compute(args: argparse.Namespace) -> dict:
    """Resolve the inputs and weights, run torch-fidelity, write the JSON; returns what was written."""
    start = time.perf_counter()
    metrics_wanted = parse_metrics(args.metrics)
    samples_path = Path(args.samples).expanduser()
    samples = load_path(samples_path, "samples")
    reference, ref_name = load_reference(args.reference, args.data_root)
    check_pair(samples, reference)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda but no CUDA device is available: use --device cpu")
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    scorer = Scorer(
        reference, ref_name, metrics_wanted, args.weights, args.cache, args.batch_size, args.kid_subset_size, args.kid_subsets, args.verbose
    )
    setup_seconds = time.perf_counter() - start

    start = time.perf_counter()
    metrics = scorer(samples, cuda)
    seconds = time.perf_counter() - start
    n_samples = len(samples)
    metrics.update(n_samples=n_samples, n_reference=len(reference), reference=args.reference, feature_extractor=FEATURE_EXTRACTOR)
    notes = []
    if n_samples < FULL_COUNT:
        notes.append(SMALL_NOTE)
    if "prc" in metrics_wanted:
        notes.append("precision/recall use Inception (2048-d) features, not the VGG16 features of Kynkaanniemi et al.")
    if notes:
        metrics["note"] = " ".join(notes)
    timings = {"setup_seconds": round(setup_seconds, 3), "metrics_seconds": round(seconds, 3)}
    timings["images_per_s"] = round(n_samples / seconds, 3) if seconds > 0 else None

    json_path = Path(args.json).expanduser() if args.json else samples_path.parent / "fid.json"
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    config["weights_used"], config["cache_name"] = str(scorer.weights), scorer.cache_name
    results = write_results(json_path, task="fid", config=config, checkpoint=None, metrics=metrics, timings=timings)
    for key, value in metrics.items():
        if isinstance(value, float):
            print(f"{key}: {value:.6g}")
    print(f"n_samples: {n_samples}  n_reference: {len(reference)}")
    if "note" in metrics:
        print(f"note: {metrics['note']}")
    print(f"wrote {json_path}")
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("samples", help="folder of generated images, or .npz with 'images' (N, H, W[, C]) uint8")
    parser.add_argument("reference", help="folder, .npz, or a data set split <dataset>-<split> (e.g. cifar10-train)")
    parser.add_argument("--metrics", default="fid", help="comma-separated: fid,kid,isc,prc (default: fid)")
    parser.add_argument("--weights", default=None, help=f"local Inception weights file (offline machines): {WEIGHTS_URL}")
    parser.add_argument("--json", default=None, help="output JSON (default: fid.json next to the samples)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--cache", default=str(DEFAULT_CACHE), help="folder of cached reference features")
    parser.add_argument("--data-root", default=None, help="dataset.root for a <dataset>-<split> reference")
    parser.add_argument("--kid-subset-size", type=int, default=1000, help="KID subset size (capped at the image counts)")
    parser.add_argument("--kid-subsets", type=int, default=100)
    parser.add_argument("--verbose", action="store_true", help="torch-fidelity's progress output")
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.kid_subset_size < 2 or args.kid_subsets < 1:
        parser.error("--batch-size and --kid-subsets must be >= 1, --kid-subset-size >= 2")
    return args


@exit_on_user_error
def main(argv: list[str] | None = None) -> dict:
    return compute(parse_args(argv))


if __name__ == "__main__":
    main()
