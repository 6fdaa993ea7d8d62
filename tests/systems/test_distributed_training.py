"""Two processes (DDP over gloo on the CPU) with batch B train like one process with batch 2B, for both stages.

Each rank draws its random numbers from its own stream and one process from one, so the two runs would
differ by Monte Carlo noise alone: both runs here pin the draws (`PINS`: posterior samples at their means,
the refiner's diffusion step and noise a function of each image). Everything DDP does is left as is: the
sharded data order, the gradient all-reduce, the reduced metrics, rank 0 writing the checkpoints.

Tolerance: the runs differ only in the order of float32 sums (the gradient all-reduce against the batch
sum inside each kernel): measured 1e-7 to 1e-6 on losses ~3 (a few float32 ulps) over 10-15 steps. A
wrong data order shifts a loss by ~1e-2 (the two halves of a global batch differ by 4e-2); 1e-4 sits
between the two.
"""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import ROOT, TINY_DIGITS, TINY_REFINER, tiny_refiner_config, tiny_train_config

from main.datasets import build_datamodule
from main.models.diffusion import GaussianDiffusion
from main.models.vdvae import decoder
from main.systems.stage_one import load_stage_one
from main.train_ae import train as train_stage_one
from main.train_ddpm import train as train_refiner

STEPS = 10
B = 16
TOLERANCE = 1e-4
COMMON = [
    f"trainer.max_steps={STEPS}",
    f"trainer.val_check_interval={STEPS}",
    "trainer.log_every_n_steps=1",
    "trainer.num_sanity_val_steps=0",
    "trainer.deterministic=true",
]
STAGE_ONE = [*COMMON, "vae.label_dropout=0"]  # label dropout draws per rank too
REFINER = [*COMMON, "ddpm.conditioning.dropout=0"]


def posterior_mean(mean, logstd, temperature=1.0, noise=None, generator=None):
    return mean


def per_image_draws(self, model, x_start, y=None, t=None, noise=None, model_kwargs=None, generator=None):
    """The refiner's training loss with the step and noise of each image drawn from a seed made of its pixels."""
    pixels = ((x_start + 1) * 127.5).round().long().flatten(1)
    generators = [torch.Generator().manual_seed(int(seed)) for seed in (pixels * torch.arange(1, pixels.shape[1] + 1)).sum(1)]
    t = torch.cat([torch.randint(0, self.num_timesteps, (1,), generator=g) for g in generators])
    noise = torch.stack([torch.randn(x_start.shape[1:], generator=g) for g in generators])
    return TRAINING_LOSS(self, model, x_start, y, t, noise, model_kwargs)


TRAINING_LOSS = GaussianDiffusion.training_loss
PINS = [(decoder, "gaussian_sample", posterior_mean), (GaussianDiffusion, "training_loss", per_image_draws)]

# Runs an entry point with PINS applied and every checkpoint write recorded as "<rank>/<world size>".
# A script file rather than `python -c`: Lightning starts rank 1 by running sys.argv[0] again.
RUNNER = """
import os, sys
sys.path[:0] = {paths!r}
import torch.distributed as dist
from main.utils.checkpoint import AtomicCheckpointIO
from test_distributed_training import PINS
for owner, name, value in PINS:
    setattr(owner, name, value)
save = AtomicCheckpointIO.save_checkpoint

def recorded_save(self, checkpoint, path, storage_options=None):
    with open(os.environ["CHECKPOINT_WRITERS"], "a") as log:
        log.write(f"{{dist.get_rank()}}/{{dist.get_world_size()}}\\n" if dist.is_initialized() else "no process group\\n")
    save(self, checkpoint, path, storage_options)

AtomicCheckpointIO.save_checkpoint = recorded_save
script = {script!r}
exec(compile(open(script).read(), script, "exec"), {{"__name__": "__main__", "__file__": script}})  # runpy would change sys.argv[0]
"""


def run_ddp(entry: str, tmp_path: Path, overrides: list[str]) -> Path:
    """Run main/<entry>.py on two CPU processes; returns the file of checkpoint writers."""
    runner, writers = tmp_path / "runner.py", tmp_path / "writers.txt"
    paths = [str(ROOT), str(ROOT / "tests"), str(Path(__file__).parent)]
    runner.write_text(RUNNER.format(paths=paths, script=str(ROOT / "main" / f"{entry}.py")))
    env = os.environ | {"OMP_NUM_THREADS": "1", "CHECKPOINT_WRITERS": str(writers)}
    args = [*overrides, "trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp", f"hydra.run.dir={tmp_path}"]
    result = subprocess.run([sys.executable, str(runner), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return writers


def logged(run_dir: Path, key: str) -> dict[int, float]:
    """step -> value of a metric in the run's metrics.csv."""
    rows = csv.DictReader(next(run_dir.glob("logs/version_*/metrics.csv")).open())
    return {int(row["step"]): float(row[key]) for row in rows if row.get(key)}


def assert_same_curves(one_dir: Path, two_dir: Path, train_key: str, val_key: str) -> float:
    """The training curves agree within TOLERANCE at every step and so does the validation metric; returns the former's gap."""
    one, two = logged(one_dir, train_key), logged(two_dir, train_key)
    assert sorted(one) == sorted(two) == list(range(STEPS))
    gap = max(abs(one[s] - two[s]) for s in one)
    print(f"max |{train_key} difference| over {STEPS} steps: {gap:.2e}")
    assert gap < TOLERANCE
    (val_one,), (val_two,) = logged(one_dir, val_key).values(), logged(two_dir, val_key).values()
    assert abs(val_one - val_two) < TOLERANCE
    return val_two


@pytest.fixture
def pinned(monkeypatch):
    for owner, name, value in PINS:
        monkeypatch.setattr(owner, name, value)
    deterministic = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(deterministic)


def test_stage_one_two_processes_train_like_one_with_twice_the_batch(tmp_path, pinned):
    one_dir, two_dir = tmp_path / "one", tmp_path / "two"
    last = train_stage_one(tiny_train_config(one_dir, *STAGE_ONE, f"vae.batch_size={2 * B}"))
    writers = run_ddp("train_ae", tmp_path, [*TINY_DIGITS, f"run_dir={two_dir}", "name=test", *STAGE_ONE, f"vae.batch_size={B}"])
    val_bpd = assert_same_curves(one_dir, two_dir, "train/loss", "val/bpd_given_label")

    # the reduced val/bpd_given_label is the mean over both ranks' halves of the val split, far from rank 0's half alone
    images, labels = next(iter(build_datamodule(tiny_train_config(one_dir).dataset, batch_size=180).val_dataloader()))
    with torch.no_grad():
        rank_zero_half = load_stage_one(last)[0].ema_vae(images[0::2], labels[0::2]).loss.mean() / math.log(2)
    assert abs(float(rank_zero_half) - val_bpd) > 100 * TOLERANCE
    assert writers.read_text().split() == ["0/2"] * 2  # best.ckpt and last.ckpt, by rank 0 only


def test_refiner_two_processes_train_like_one_with_twice_the_batch(tmp_path, pinned):
    stage_one = train_stage_one(tiny_train_config(tmp_path / "vae", "trainer.max_steps=2", "trainer.val_check_interval=2"))
    one_dir, two_dir = tmp_path / "one", tmp_path / "two"
    train_refiner(tiny_refiner_config(one_dir, stage_one, *REFINER, f"ddpm.batch_size={2 * B}"))
    overrides = [*TINY_REFINER, f"stage_one={stage_one}", f"run_dir={two_dir}", "name=test", *REFINER, f"ddpm.batch_size={B}"]
    writers = run_ddp("train_ddpm", tmp_path, overrides)
    assert_same_curves(one_dir, two_dir, "train/loss", "val/loss")
    assert writers.read_text().split() == ["0/2"] * 2
