"""FID (and on request KID, Inception Score, precision/recall) of generated images, offline, with torch-fidelity's network and maths.

    python main/fid.py outputs/run/samples.npz cifar10-test --data-root ../shared/data
    python main/fid.py samples_folder data/ref_pngs --metrics fid,kid,isc,prc --weights ~/weights-inception.pth

`samples` and `reference`: a folder of images (PNG/JPEG, not recursive), an .npz with `images` (N, H, W[, C]) uint8,
or a data set split `<dataset>-<split>` (cifar10-train, cifar10-test, digits-test, ...) read through
`main/configs/dataset/<dataset>.yaml` (`--data-root` sets its root; no flips). The network is the TF-2015 FID Inception
(main/models/inception.py: offline by default, `--weights` for torch-fidelity's own file, which IS needs).
Features are cached as verified .npz files in `--cache`, named after the images and the network, so later runs against
the same reference only process the samples, and an interrupted extraction resumes. Writes the metrics to `--json`
(default: fid.json next to the samples) with the results.json schema. The scoring lives in main/evaluation/fid.py."""

from __future__ import annotations

try:  # first: puts the repository on sys.path
    from main import _bootstrap  # noqa: F401  (run as a package)
except ModuleNotFoundError:
    import _bootstrap  # noqa: F401  (run as `python main/<entry>.py`)
import argparse
import time
from pathlib import Path

import torch

from main.evaluation.fid import DEFAULT_CACHE, Scorer, check_pair, load_reference, parse_metrics
from main.models import inception
from main.utils.errors import UserError, exit_on_user_error
from main.utils.results import write_results

FULL_COUNT = 50_000
SMALL_NOTE = (
    "FID is biased upward below 50,000 samples: compare only values computed with the same number of samples (and the same reference)."
)


def compute(args: argparse.Namespace) -> dict:
    """Resolve the inputs and weights, run torch-fidelity, write the JSON; returns what was written."""
    start = time.perf_counter()
    metrics_wanted = parse_metrics(args.metrics)
    samples_path = Path(args.samples).expanduser()
    samples, samples_name = load_reference(args.samples, args.data_root)
    reference, ref_name = load_reference(args.reference, args.data_root)
    check_pair(samples, reference)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda but no CUDA device is available: use --device cpu")
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    scorer = Scorer(
        reference,
        ref_name,
        metrics_wanted,
        args.weights,
        args.cache,
        args.batch_size,
        args.kid_subset_size,
        args.kid_subsets,
        not args.quiet,
    )
    setup_seconds = time.perf_counter() - start

    start = time.perf_counter()
    metrics = scorer(samples, cuda, samples_name)
    seconds = time.perf_counter() - start
    n_samples = len(samples)
    metrics.update(n_samples=n_samples, n_reference=len(reference), reference=args.reference, feature_extractor=inception.NAME)
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
    config["weights_used"] = str(scorer.weights)
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
    parser.add_argument(
        "--weights", default=None, help=f"torch-fidelity's Inception weights file ({inception.WEIGHTS_URL}); default: the offline network"
    )
    parser.add_argument("--json", default=None, help="output JSON (default: fid.json next to the samples)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--cache", default=str(DEFAULT_CACHE), help="folder of cached reference features")
    parser.add_argument("--data-root", default=None, help="dataset.root for a <dataset>-<split> reference")
    parser.add_argument("--kid-subset-size", type=int, default=1000, help="KID subset size (capped at the image counts)")
    parser.add_argument("--kid-subsets", type=int, default=100)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.kid_subset_size < 2 or args.kid_subsets < 1:
        parser.error("--batch-size and --kid-subsets must be >= 1, --kid-subset-size >= 2")
    return args


@exit_on_user_error
def main(argv: list[str] | None = None) -> dict:
    return compute(parse_args(argv))


if __name__ == "__main__":
    main()
