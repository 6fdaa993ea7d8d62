"""Speed of stage one, printed as JSON: `bash scripts/bench.sh stage1 [--quick]`.

For each preset, in its own process (so peak memory is its own): the median time of a real
training step (Lightning's loop with our system: forward, backward, clipping, AdamW, EMA),
evaluation and sampling images/s, peak resident memory; plus, for the small preset, the same
training step under bf16 autocast and channels_last, interleaved with fp32 so the ratios are fair
on a noisy machine. Synthetic uint8 batches: the data pipeline is not what is measured.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import lightning.pytorch as pl

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PRESETS = {"small": "cifar10_cpu", "cifar10": "cifar10"}


def load_average() -> float:
    return os.getloadavg()[0]


def compose_preset(preset: str):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "main" / "configs"), version_base="1.3"):
        return compose("train_ae", overrides=["dataset=cifar10", f"vae={preset}", "run_dir=/tmp/unused", "name=bench"])


class StepTimer(pl.Callback):
    """Times each training batch, from its start to the end of its optimizer and EMA update."""

    def __init__(self):
        self.times: list[float] = []

    def on_train_batch_start(self, *args) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, *args) -> None:
        self.times.append(time.perf_counter() - self._start)


def train_step_seconds(cfg, batch: int, steps: int, precision: str = "32", channels_last: bool = False) -> list[float]:
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from main.train_ae import build_system

    torch.manual_seed(0)
    cfg.channels_last = channels_last
    system = build_system(cfg)
    images = torch.randint(0, 256, (batch * steps, 3, 32, 32), dtype=torch.uint8)
    loader = DataLoader(TensorDataset(images, torch.full((len(images),), -1)), batch_size=batch)
    timer = StepTimer()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        precision=precision,
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[timer],
    )
    trainer.fit(system, train_dataloaders=loader)
    return timer.times


def measure(name: str, quick: bool) -> dict:
    import torch

    from main.models.vdvae import HierarchicalVAE
    from main.utils.config import plain

    cfg = compose_preset(PRESETS[name])
    batch = 16
    steps, warmup = (4, 1) if name == "cifar10" or quick else (12, 2)
    load_before = load_average()
    step_times = train_step_seconds(cfg, batch, steps + warmup)[warmup:]
    result = {
        "preset": PRESETS[name],
        "batch": batch,
        "train_step_s_median": statistics.median(step_times),
        "train_step_s_all": step_times,
    }
    result["train_images_per_s"] = batch / result["train_step_s_median"]
    torch.manual_seed(0)
    vae = HierarchicalVAE(**plain(cfg.vae.model)).eval()
    n_params = sum(p.numel() for p in vae.parameters())
    x = torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        evals = timed(lambda: vae(x), 3 if name == "cifar10" else 7)
        samples = timed(lambda: vae.sample(batch), 3 if name == "cifar10" else 7)
    result.update(
        n_params=n_params,
        eval_images_per_s=batch / statistics.median(evals),
        sample_images_per_s=batch / statistics.median(samples),
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        load_average_before=load_before,
        load_average_after=load_average(),
    )
    if name == "small" and not quick:
        result["variants"] = variants(cfg, batch)
    return result


def timed(fn, n: int) -> list[float]:
    fn()
    out = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def variants(cfg, batch: int, rounds: int = 3, steps: int = 6) -> dict:
    """fp32 vs bf16-mixed vs channels_last, interleaved; each figure is a median over rounds."""
    settings = {"fp32": ("32", False), "bf16-mixed": ("bf16-mixed", False), "fp32_channels_last": ("32", True)}
    medians: dict[str, list[float]] = {k: [] for k in settings}
    for _ in range(rounds):
        for key, (precision, channels_last) in settings.items():
            medians[key].append(statistics.median(train_step_seconds(cfg, batch, steps, precision, channels_last)[1:]))
    fp32 = statistics.median(medians["fp32"])
    return {k: {"train_step_s_median": statistics.median(v), "speed_vs_fp32": fp32 / statistics.median(v)} for k, v in medians.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("suite", choices=["stage1"])
    parser.add_argument("--quick", action="store_true", help="small preset only, fewer steps")
    parser.add_argument("--preset", choices=list(PRESETS), help="internal: measure one preset in this process")
    args = parser.parse_args()
    if args.preset:
        print(json.dumps(measure(args.preset, args.quick)))
        return
    import torch

    report = {
        "suite": args.suite,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "unknown"),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "unset"),
        "results": {},
    }
    for name in ["small"] if args.quick else list(PRESETS):
        cmd = [sys.executable, __file__, args.suite, "--preset", name] + (["--quick"] if args.quick else [])
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        report["results"][name] = json.loads(out.strip().splitlines()[-1])
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
