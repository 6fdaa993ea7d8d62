"""A proxy sample-quality score for CIFAR-10 runs on machines that cannot compute FID.

Why: real FID needs torch-fidelity's Inception weights, which are downloaded on first use; on an
offline machine they cannot be, so there is no FID to rank our own runs (e.g. the refiner's
conditioning settings). This script trains a small CIFAR-10 classifier once (a compact ResNet,
a few minutes on one CPU core) and then scores image sets by the Fréchet distance between their
penultimate-layer features and those of the CIFAR-10 test split, the FID formula with a different
feature extractor. It also reports the classifier's mean max-softmax confidence (do the images look
like some class?) and the entropy of the predicted-class histogram (are all classes produced?).

    python scripts/classifier_fd.py train --data-root ../shared/data [--minutes 8]
    python scripts/classifier_fd.py score <folder of PNGs | .npz with 'images' NHWC uint8> [--json out.json]

Limits: the value is NOT comparable with published (Inception) FIDs, nor between two classifier
files (each training run gives different features). It is biased upward for small image sets, so
compare runs only with the same classifier file and the same number of images. A small classifier
trained for minutes sees coarse, class-relevant features; it is less sensitive than Inception to
fine texture, and it has seen the CIFAR-10 train split, so it ranks, it does not certify.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from PIL import Image
from torch import nn
from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_features_to_statistics, fid_statistics_to_metric

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from main.datasets import build_datamodule  # noqa: E402
from main.utils.errors import UserError, exit_on_user_error  # noqa: E402
from main.utils.image_io import to_unit_range  # noqa: E402

DEFAULT_CLASSIFIER = ROOT / "outputs" / "classifier_fd" / "cifar10.pt"
DATASET_CONFIG = ROOT / "main" / "configs" / "dataset" / "cifar10.yaml"
FORMAT = "classifier_fd/1"
NOTE = (
    "Proxy score: Frechet distance in the penultimate features of a small CIFAR-10 classifier trained on this machine, "
    "to the CIFAR-10 test split. NOT comparable with published Inception FIDs, nor across classifier files; "
    "compare runs only with the same classifier file and the same number of images."
)


# ---------------------------------------------------------------- the classifier


def conv_bn(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class Residual(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(*conv_bn(channels, channels), *conv_bn(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class SmallResNet(nn.Module):
    """A ResNet-9-like net shrunk for one CPU core: widths w, 2w, 4w, 8w at 1, 1/2, 1/4, 1/8 of the image side.

    Takes uint8 (or 0..255 float) images, so callers never normalise; `features` is the 8w-dim
    global-average-pooled penultimate layer the Fréchet distance is measured in.
    """

    def __init__(self, channels: int = 3, image_size: int = 32, num_classes: int = 10, width: int = 24):
        super().__init__()
        if image_size % 8:
            raise ValueError(f"image_size must be a multiple of 8 (three 2x poolings), got {image_size}")
        self.channels, self.image_size, w = channels, image_size, width
        self.features = nn.Sequential(
            *conv_bn(channels, w),
            nn.MaxPool2d(2),
            *conv_bn(w, 2 * w),
            nn.MaxPool2d(2),
            Residual(2 * w),
            *conv_bn(2 * w, 4 * w),
            nn.MaxPool2d(2),
            Residual(4 * w),
            *conv_bn(4 * w, 8 * w),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(8 * w, num_classes)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        x = to_unit_range(images).contiguous(memory_format=torch.channels_last)
        return self.features(x)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(images))


def build_classifier(**arch) -> SmallResNet:
    # channels_last is ~1.3x faster for these convolutions on the CPU.
    return SmallResNet(**arch).to(memory_format=torch.channels_last)


@torch.no_grad()
def extract(model: SmallResNet, batches: Iterable[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Penultimate features (float64, so the statistics are float64 as in FID) and softmax probabilities."""
    model.eval()
    features, probs = [], []
    for images in batches:
        embedding = model.embed(images)
        features.append(embedding.double())
        probs.append(model.head(embedding).softmax(dim=1))
    return torch.cat(features), torch.cat(probs)


def statistics(features: torch.Tensor) -> dict[str, torch.Tensor]:
    """mu, sigma (float64) of a feature set, by torch-fidelity's own FID function."""
    stats = fid_features_to_statistics(features.double().cpu())
    return {"mu": torch.from_numpy(stats["mu"]), "sigma": torch.from_numpy(np.atleast_2d(stats["sigma"]))}


def frechet_distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^1/2), by torch-fidelity's own FID formula."""
    as_numpy = lambda s: {k: v.double().numpy() for k, v in s.items()}
    return float(fid_statistics_to_metric(as_numpy(a), as_numpy(b), verbose=False)[KEY_METRIC_FID])


def prediction_summary(probs: torch.Tensor) -> dict[str, float | list[float]]:
    """Mean max-softmax (confidence) and the entropy in bits of the predicted-class histogram (diversity)."""
    fractions = torch.bincount(probs.argmax(dim=1), minlength=probs.shape[1]).double() / len(probs)
    nonzero = fractions[fractions > 0]
    return {
        "mean_max_softmax": float(probs.max(dim=1).values.mean()),
        "class_entropy_bits": abs(float((nonzero * nonzero.log2()).sum())),
        "class_entropy_max_bits": math.log2(probs.shape[1]),
        "predicted_class_fractions": [round(float(f), 4) for f in fractions],
    }


def save_classifier(path: Path, model: SmallResNet, arch: dict, test_accuracy: float, test_stats: dict, **extra) -> None:
    """Write the classifier file atomically (a crash never leaves a half-written file under the final name)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "state_dict": model.state_dict(), "arch": arch, "test_accuracy": test_accuracy, "test_stats": test_stats}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(payload | extra, tmp)
    os.replace(tmp, path)


def load_classifier(path: Path) -> tuple[SmallResNet, dict]:
    if not path.is_file():
        raise UserError(
            f"no classifier at '{path}': train it first (about 10 minutes on a CPU) with "
            "`bash scripts/classifier_fd.sh train --data-root ../shared/data`, or pass --classifier <file>"
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        if payload.get("format") != FORMAT:
            raise ValueError(f"format is {payload.get('format')!r}, not {FORMAT!r}")
        model = build_classifier(**payload["arch"])
        model.load_state_dict(payload["state_dict"])
    except Exception as err:  # any unreadable file gets the same one-line fix
        raise UserError(f"'{path}' is not a classifier file of this script ({err}): retrain it with `classifier_fd.sh train`") from None
    return model.eval(), payload


# ---------------------------------------------------------------- training


def random_crop(images: torch.Tensor, pad: int = 4) -> torch.Tensor:
    """Standard CIFAR augmentation: reflect-pad by `pad` and crop back at a random offset per image."""
    n, _, h, w = images.shape
    padded = F.pad(images.float(), (pad, pad, pad, pad), mode="reflect")
    offsets = torch.randint(0, 2 * pad + 1, (n, 2)).tolist()
    return torch.stack([padded[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(offsets)])


def learning_rate(fraction: float, peak: float, warmup: float = 0.1) -> float:
    """Linear warm-up then linear decay to 0, as a function of the elapsed share of the wall-clock budget."""
    if fraction < warmup:
        return peak * (0.1 + 0.9 * fraction / warmup)
    return peak * max(0.0, 1 - fraction) / (1 - warmup)


def train(
    data_root: Path,
    minutes: float,
    out: Path,
    width: int = 24,
    batch_size: int = 128,
    peak_lr: float = 0.1,
    seed: int = 0,
    dataset_overrides: dict | None = None,
) -> dict:
    """Train for `minutes` of wall-clock time, measure the test split, save the classifier file; returns the summary."""
    if not Path(data_root).expanduser().exists():
        raise UserError(f"data root '{data_root}' does not exist: pass --data-root <folder with cifar10_train*.npz and cifar10_test*.npz>")
    torch.manual_seed(seed)
    cfg = OmegaConf.merge(OmegaConf.load(DATASET_CONFIG), {"root": str(data_root)}, dataset_overrides or {})
    data = build_datamodule(cfg, batch_size=batch_size, seed=seed, eval_batch_size=500)
    loader = data.train_dataloader()  # shuffled per epoch, random horizontal flips (dataset flip: true)
    arch = {"channels": data.channels, "image_size": data.image_size, "num_classes": data.num_classes, "width": width}
    model = build_classifier(**arch)
    optimizer = torch.optim.SGD(model.parameters(), lr=peak_lr, momentum=0.9, nesterov=True, weight_decay=5e-4)

    budget, start, last_log = minutes * 60, time.monotonic(), 0.0
    steps = seen = epoch = 0
    model.train()
    while time.monotonic() - start < budget:
        loader.sampler.set_epoch(epoch)
        for images, labels in loader:
            elapsed = time.monotonic() - start
            if elapsed >= budget:
                break
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(elapsed / budget, peak_lr)
            logits = model(random_crop(images))
            loss = F.cross_entropy(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            steps, seen = steps + 1, seen + len(images)
            if elapsed - last_log >= 30:
                last_log = elapsed
                accuracy = (logits.argmax(1) == labels).float().mean()
                print(f"{elapsed:5.0f}s epoch {epoch} step {steps} loss {loss.item():.3f} batch acc {accuracy:.3f}", flush=True)
        epoch += 1
    train_seconds = time.monotonic() - start

    test = list(data.test_dataloader())
    features, probs = extract(model, (images for images, _ in test))
    labels = torch.cat([labels for _, labels in test])
    test_accuracy = float((probs.argmax(1) == labels).double().mean())
    reference = prediction_summary(probs)
    reference.pop("predicted_class_fractions")
    info = {
        "train_minutes": round(train_seconds / 60, 2),
        "train_steps": steps,
        "train_epochs": round(seen / len(loader.sampler), 2),
        "parameters": sum(p.numel() for p in model.parameters()),
        "test_images": len(labels),
    }
    save_classifier(out, model, arch, test_accuracy, statistics(features), test_reference=reference, train_info=info)
    return {"classifier": str(out), "test_accuracy": round(test_accuracy, 4), "feature_dim": features.shape[1], **info, **reference}


# ---------------------------------------------------------------- scoring


def _png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        if image.mode not in ("L", "RGB"):
            raise UserError(f"'{path}' is a {image.mode} PNG: save the images as 8-bit RGB (or L for grayscale)")
        return np.asarray(image)


def load_images(path: Path, image_size: int, channels: int) -> torch.Tensor:
    """uint8 [N, C, H, W] from a folder of PNGs (sorted, not recursive) or an .npz with `images` (N, H, W[, C]) uint8."""
    if path.is_dir():
        files = sorted(path.glob("*.png"))
        if not files:
            raise UserError(f"no .png files in '{path}': pass a folder of generated PNGs (e.g. a test_ddpm samples folder)")
        arrays = [(str(f), _png(f)) for f in files]
    elif path.is_file() and path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as archive:
            if "images" not in archive:
                raise UserError(f"'{path}' has no 'images' array (it has: {', '.join(archive.files)}): save them as images=<NHWC uint8>")
            array = archive["images"]
        if array.dtype != np.uint8 or array.ndim not in (3, 4) or len(array) == 0:
            raise UserError(f"'{path}': 'images' is {array.dtype} {array.shape}: expected a non-empty NHWC uint8 array")
        arrays = [(str(path), array if array.ndim == 4 else array[..., None])]
    elif not path.exists():
        raise UserError(f"'{path}' does not exist: pass a folder of PNGs or an .npz file with an 'images' array")
    else:
        raise UserError(f"'{path}' is neither a folder of PNGs nor an .npz file")

    expected = (image_size, image_size, channels)
    batches = []
    for source, array in arrays:
        array = array[..., None] if array.ndim == 2 else array
        shape = array.shape[-3:]
        if shape != expected:
            raise UserError(
                f"'{source}': images are {shape[0]}x{shape[1]} with {shape[2]} channel(s), but the classifier takes "
                f"{image_size}x{image_size} with {channels}: score CIFAR-10-sized samples"
            )
        batches.append(torch.from_numpy(np.ascontiguousarray(array.reshape(-1, *expected).transpose(0, 3, 1, 2))))
    return torch.cat(batches)


def score(images: torch.Tensor, model: SmallResNet, payload: dict, batch_size: int = 500) -> dict:
    """Classifier FD of `images` to the cached test-split statistics, plus confidence and class diversity."""
    if len(images) < 2:
        raise UserError(f"got {len(images)} image: a covariance needs at least 2 (use the same, large count for every run)")
    features, probs = extract(model, images.split(batch_size))
    result = {
        "classifier_fd": float(f"{frechet_distance(statistics(features), payload['test_stats']):.6g}"),
        "n_images": len(images),
        "feature_dim": features.shape[1],
        "classifier_test_accuracy": round(payload["test_accuracy"], 4),
        **prediction_summary(probs),
        "test_split_reference": payload.get("test_reference", {}),
        "note": NOTE,
    }
    if len(images) <= features.shape[1]:
        result["warning"] = f"{len(images)} images <= {features.shape[1]} feature dims: the covariance is singular, the value is noisy"
    return result


# ---------------------------------------------------------------- command line


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    fit = commands.add_parser("train", help="train the classifier and cache the test-split feature statistics")
    fit.add_argument("--data-root", type=Path, required=True, help="folder with CIFAR-10 (cifar10_*.npz or cifar-10-batches-py/)")
    fit.add_argument("--minutes", type=float, default=8.0, help="wall-clock training budget (default 8)")
    fit.add_argument("--out", type=Path, default=DEFAULT_CLASSIFIER, help="classifier file (default outputs/classifier_fd/cifar10.pt)")
    fit.add_argument("--width", type=int, default=24, help="base channel width (24: ~0.43M parameters)")
    fit.add_argument("--seed", type=int, default=0)
    rate = commands.add_parser("score", help="score a folder of PNGs or an .npz of images")
    rate.add_argument("images", type=Path, help="folder of PNGs, or .npz with 'images' NHWC uint8")
    rate.add_argument("--classifier", type=Path, default=DEFAULT_CLASSIFIER, help="default outputs/classifier_fd/cifar10.pt")
    rate.add_argument("--json", type=Path, help="also write the result here")
    return parser.parse_args(argv)


@exit_on_user_error
def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.command == "train":
        result = train(args.data_root, args.minutes, args.out, width=args.width, seed=args.seed)
    else:
        model, payload = load_classifier(args.classifier)
        images = load_images(args.images, model.image_size, model.channels)
        result = {**score(images, model, payload), "images": str(args.images), "classifier": str(args.classifier)}
    text = json.dumps(result, indent=2)
    print(text)
    if getattr(args, "json", None):
        args.json.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.json.with_name(f".{args.json.name}.tmp")
        tmp.write_text(text + "\n")
        os.replace(tmp, args.json)
    return result


if __name__ == "__main__":
    main()
