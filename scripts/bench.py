"""Speed, memory and time-to-quality benchmarks, printed as JSON.

`bash scripts/bench.sh stage1|stage2|latent|memory|presets|precision|time_to_quality|refiner_time_to_quality [--quick]`.

Each preset is measured in its own process (so peak memory is its own), with the load average
before and after; --quick measures the small preset only, with fewer steps. Synthetic batches: the
data pipeline is not what is measured. Set OMP_NUM_THREADS to pin the thread count (reported).

stage1 (the VAE presets): the median time of a real training step (Lightning's loop with our
system: forward, backward, clipping, AdamW, EMA), evaluation and sampling images/s, peak resident
memory; plus, for the small preset, the same training step under bf16 autocast and channels_last,
interleaved with fp32 so the ratios are fair on a noisy machine.

stage2 (the denoiser UNet presets, formulation 1, 32x32, fp32): the median time and images/s of a
training step (GaussianDiffusion.training_loss forward, backward, gradient clipping at 1.0, fused
Adam at lr 2e-4) and the median time of one sampling step (one denoiser evaluation plus the update,
no grad, eval mode) for the ddpm and ddim samplers on a respaced chain; and end to end, two-stage
images/s (stage-one VAE samples of the cifar10_cpu preset refined with DDIM) at 10, 25, 50 and 1000 steps.

latent (stage one in latent space against pixel space, at the same output resolution, random weights):
sampling images/s of the pixel-space VAE and of the latent-space VAE plus the autoencoder's decoder,
interleaved; at 32 px the CPU presets (cifar10_cpu against cifar10_latent_cpu with our KL-f4 autoencoder),
at 256 px the FFHQ-256 presets (ffhq256 against ffhq256_latent with Stable Diffusion's KL-f8 architecture).

memory (activation checkpointing): for the VAE presets cifar10_cpu and cifar10 and the refiner presets
ddpm=cifar10_cpu and ddpm=cifar10 (over a cifar10_cpu stage one with random weights), batch 16, fp32, each
without and with activation_checkpointing, each configuration in a fresh process: the median time of a real
training step (Lightning's loop with our system: forward, backward, clipping, fused AdamW, EMA; 1 warm-up and 3
timed steps) and its peak memory above what the process holds when training starts (weights, EMA, stage one), so
gradients and Adam's moments count. On a GPU that is torch.cuda.max_memory_allocated. The CPU has no allocation
statistics, so the resident set's high-water mark stands in (VmHWM, reset when training starts through
/proc/self/clear_refs). glibc's malloc keeps freed memory in its heap, fragmented, so the timed steps' mark
(peak_step_rss_default_malloc_mb: what the process really held) overstates the tensors in use; one more, untimed
step runs with every allocation of 64 KiB or more mapped on its own and unmapped when freed, and its mark is the
peak of the live tensors (peak_step_mb), the figure comparable to a GPU's. --quick measures the CPU presets only.

presets (which GPU each preset fits): every VAE and refiner preset's fp32 training step at its own batch size, plain and
with activation_checkpointing, estimated without arithmetic (scripts/memory_estimate.py): the system is built on the
meta device and one forward of the training loss and its backward run on shapes alone, every tensor an operation
creates counted until freed. Reported: the trained weights, their gradients and Adam's two moments, the EMA copy, other
weights (a refiner's stage one, a latent VAE's autoencoder), the activations saved for backward, the forward/backward
peak and the step's total, and whether it fits a 16, 24, 40 and 80 GB card with 10% and 1 GB to spare (CUDA context,
cuDNN workspaces, fragmentation). A refiner runs over the VAE preset of its name (at 128 px, where none fits: no stage
one, unconditional). The check:<config> entries run the memory suite's measurement of a CPU preset at batch 16 and the
estimate of the same step, and report estimate / measured. --quick: vae=cifar10_cpu, vae=ffhq256 and the checks.

precision (what trainer.precision=auto and channels_last=auto choose from, main/utils/hardware.py): for vae=cifar10_cpu
and ddpm=cifar10_cpu (over a cifar10_cpu stage one with random weights), batch 16, a real training step in fp32,
bf16-mixed and fp32 channels_last, interleaved over 3 rounds (1 warm-up and 3 timed steps each): the median of the
rounds' medians, and the median over rounds of fp32's time over the setting's (speed_vs_fp32, paired so that the
machine's load cancels). The report names the CPU capability PyTorch dispatches to.

time_to_quality (what a user feels: wall-clock to a given test bits/dim; needs CIFAR-10, from $GENVAE_SHARED_DATA or
../shared/data): the cifar10_cpu VAE trained on CIFAR-10 at batch 16 for 600 steps in fp32 (our preset's recipe), in bf16-mixed
(the same recipe, to show bf16 costs no likelihood at equal steps) and with openai/vdvae's recipe (lr 2e-4, warm-up
100, EMA 0.9999) for 2,000 steps, each in its own process. Every 100 steps the EMA weights' bits/dim on the
first 1,000 test images gives a curve point (the same images for every run, so differences between runs are
paired); the whole test set is evaluated at the first point that reaches 5.6 bits/dim (VDVAE's recipe's figure
after 2,000 steps) and at the last step, and only it decides when 5.6 is reached. Training wall-clock excludes the
evaluations. The summary sets our seconds to 5.6 against the recipe's 2,000 steps at its median step time.

refiner_time_to_quality (the same for the refiner; CIFAR-10 as above): the ddpm=cifar10_cpu refiner trained at batch 16
for 2,000 steps in fp32 as our preset (lr 1e-3, warm-up 200, EMA 0.999, v-prediction) and with DiffuseVAE's recipe (lr
2e-4, warm-up 5000, EMA 0.9999, eps-prediction), each in its own process, over the same stage one: --stage-one PATH, or
else each run first trains the cifar10_cpu VAE for 400 steps at batch 16 from seed 0 (the same one on one machine). Every
100 steps the EMA refiner's L_simple in epsilon units, mean ||eps - eps_hat||^2 on the first 1,000 test images (eps_hat
converted from an eps or v output by the diffusion), with the steps, noise and stage-one conditions drawn once from a
fixed seed (the same for both runs). The summary: where ours first reaches the recipe's final value, in steps and
training seconds, against the recipe's 2,000 steps and seconds. --parallel starts the runs at once.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import lightning.pytorch as pl

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from main.utils.checkpoint import load_checkpoint  # noqa: E402  (the repository is on sys.path now)
from main.utils.errors import exit_on_user_error  # noqa: E402

PRESETS = {"small": "cifar10_cpu", "cifar10": "cifar10"}  # stage1: name -> VAE config
UNET_PRESETS = ["small", "cifar10"]  # stage2: names in main.models.diffusion.unet.UNET_PRESETS


def load_average() -> float:
    return os.getloadavg()[0]


def compose_preset(preset: str, dataset: str = "cifar10", overrides: tuple[str, ...] = ()):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "main" / "configs"), version_base="1.3"):
        return compose("train_ae", overrides=[f"dataset={dataset}", f"vae={preset}", "run_dir=/tmp/unused", "name=bench", *overrides])


def compose_ddpm(preset: str, overrides: tuple[str, ...] = (), dataset: str = "cifar10"):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "main" / "configs"), version_base="1.3"):
        return compose(
            "train_ddpm",
            overrides=[f"dataset={dataset}", f"ddpm={preset}", "run_dir=/tmp/unused", "name=bench", "stage_one=null", *overrides],
        )


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

    from main.train_ae import build_system

    torch.manual_seed(0)
    cfg.channels_last = channels_last
    return fit_steps(build_system(cfg), batch, steps, precision)


def fit_steps(system: pl.LightningModule, batch: int, steps: int, precision="32", accelerator="cpu", callbacks=()) -> list[float]:
    """Seconds of each of `steps` training steps of `system` in Lightning's loop, on random uint8 32x32 images without labels."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    images = torch.randint(0, 256, (batch * steps, 3, 32, 32), dtype=torch.uint8)
    loader = DataLoader(TensorDataset(images, torch.full((len(images),), -1)), batch_size=batch)
    timer = StepTimer()
    bare_trainer(steps, precision, accelerator, [timer, *callbacks]).fit(system, train_dataloaders=loader)
    return timer.times


def bare_trainer(max_steps: int, precision: str, accelerator: str, callbacks: list) -> pl.Trainer:
    """A Trainer that only trains: no validation, logger, checkpoints, progress bar or summary to time."""
    return pl.Trainer(
        accelerator=accelerator,
        devices=1,
        precision=precision,
        max_steps=max_steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=callbacks,
    )


def measure_stage1(name: str, quick: bool) -> dict:
    import torch

    from main.models.vdvae import HierarchicalVAE
    from main.utils.config import plain

    cfg = compose_preset(PRESETS[name])
    batch = 16
    steps, warmup = (4, 1) if name == "cifar10" or quick else (12, 2)
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
    )
    if name == "small" and not quick:
        result["variants"] = variants(cfg, batch)
    return result


def timed(fn, n: int, warmup: int = 1) -> list[float]:
    """Seconds of each of n calls of fn, after warmup untimed calls."""
    for _ in range(warmup):
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


def diffusion_train_step(model, diffusion, batch: int, clip: float = 1.0, lr: float = 2e-4):
    """A closure running one formulation-1 training step (loss, backward, clipping, fused Adam) on fixed data."""
    import torch

    optimizer = torch.optim.Adam(model.parameters(), lr=lr, fused=True)
    x_start = torch.rand(batch, model.out_channels, model.image_size, model.image_size) * 2 - 1
    y = (x_start + 0.1 * torch.randn_like(x_start)).clamp(-1, 1)  # a stand-in for the stage-one image

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        diffusion.training_loss(model, x_start, y).mean().backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()

    return step


def sampling_step_seconds(model, diffusion, batch: int, sampler: str, steps: int, warmup: int = 1) -> list[float]:
    """Seconds of each step of a `steps`-step respaced chain (eval mode, no grad), the first `warmup` dropped."""
    import torch

    from main.models.diffusion.respace import respaced
    from main.models.diffusion.samplers import sample_loop_progressive

    model.eval()
    y = torch.rand(batch, model.out_channels, model.image_size, model.image_size) * 2 - 1
    times = []
    start = time.perf_counter()
    for _ in sample_loop_progressive(respaced(diffusion, steps), model, y=y, sampler=sampler):
        now = time.perf_counter()
        times.append(now - start)
        start = now
    return times[warmup:]


def two_stage_system(unet_preset: str):
    """A refiner of the `unet_preset` UNet over the cifar10_cpu VAE (random weights: speed does not depend on them)."""
    from main.models.diffusion.unet import unet_kwargs

    return refiner_system(compose_ddpm("cifar10"), unet_kwargs(unet_preset, "form1"), cpu_vae()).eval()


def refiner_system(ddpm_cfg, unet: dict, vae: dict | None):
    """A refiner with `unet` and ddpm_cfg's data set, diffusion and training settings over a VAE of kwargs ``vae`` with
    random weights (None: no stage one)."""
    from main.systems.stage_two import StageTwoSystem
    from main.utils.config import plain

    ddpm, data = plain(ddpm_cfg.ddpm), plain(ddpm_cfg.dataset)
    return StageTwoSystem(
        unet=unet,
        diffusion=ddpm["diffusion"],
        conditioning=ddpm["conditioning"],
        optim=ddpm["optim"],
        data=data,
        stage_one=vae and {"checkpoint": None, "model": vae, "data": data, "global_step": 0},
        activation_checkpointing=ddpm["activation_checkpointing"],
    )


def cpu_vae() -> dict:
    """The cifar10_cpu VAE's kwargs: the stage one under the speed and memory suites' refiners."""
    from main.utils.config import plain

    return plain(compose_preset("cifar10_cpu").vae.model)


def end_to_end(name: str, batch: int, quick: bool, per_step_s: float) -> dict:
    """Two-stage images/s (VAE sample + DDIM refinement of it) at 10, 25, 50 and 1000 steps.

    The 1000-step chain of the 35.7M UNet would take ~20 min at batch 8 on this CPU, so for it the figure is
    the measured stage-one time plus 1000 measured per-step times, marked "estimated".
    """
    system = two_stage_system(name)
    stage_one = timed(lambda: system.stage_one_samples(batch), 3)
    result = {"stage_one_images_per_s": batch / statistics.median(stage_one)}
    for steps in [10] if quick else [10, 25, 50, 1000]:
        if steps == 1000 and name != "small":
            seconds = statistics.median(stage_one) + steps * per_step_s
            result[f"steps_{steps}"] = {"images_per_s": batch / seconds, "estimated": True}
            continue
        start = time.perf_counter()
        system.generate(batch, {"name": "ddim", "steps": steps})
        seconds = time.perf_counter() - start
        result[f"steps_{steps}"] = {"images_per_s": batch / seconds, "seconds": seconds}
    return result


def measure_stage2(name: str, quick: bool) -> dict:
    import torch

    from main.models.diffusion.gaussian_diffusion import GaussianDiffusion
    from main.models.diffusion.schedules import get_beta_schedule
    from main.models.diffusion.unet import build_unet

    batch, formulation = 8, "form1"
    steps = 4 if quick else 10
    sample_steps = 4 if quick else 8
    torch.manual_seed(0)
    model = build_unet(name, formulation)
    diffusion = GaussianDiffusion(get_beta_schedule("linear", 1000), formulation=formulation)
    model.train()
    step_times = timed(diffusion_train_step(model, diffusion, batch), steps, warmup=2)
    train = {"step_s_median": statistics.median(step_times), "step_s_all": step_times}
    train["images_per_s"] = batch / train["step_s_median"]
    sampling = {}
    for sampler in ["ddpm", "ddim"]:
        times = sampling_step_seconds(model, diffusion, batch, sampler, sample_steps + 1)
        sampling[sampler] = {"step_s_median": statistics.median(times), "step_s_all": times}
    end_to_end_result = end_to_end(name, batch, quick, sampling["ddim"]["step_s_median"])
    return {
        "preset": name,
        "formulation": formulation,
        "image_size": model.image_size,
        "batch": batch,
        "precision": "fp32",
        "n_params": sum(p.numel() for p in model.parameters()),
        "train": train,
        "sampling": sampling,
        "end_to_end": end_to_end_result,
    }


# latent: name -> (data set, pixel-space preset, latent-space preset)
LATENT_PAIRS = {"32px": ("cifar10", "cifar10_cpu", "cifar10_latent_cpu"), "256px": ("ffhq256", "ffhq256", "ffhq256_latent")}
# Stable Diffusion's KL-f8 autoencoder (83.7M parameters), as a diffusers AutoencoderKL config.
SD_KL_F8 = dict(
    in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
    block_out_channels=[128, 256, 512, 512], layers_per_block=2, latent_channels=4, norm_num_groups=32, sample_size=256,
)  # fmt: skip


def measure_latent(name: str, quick: bool) -> dict:
    import torch

    from main.models.autoencoder import DiffusersAutoencoder, KLAutoencoder
    from main.models.latent_space import LatentSpaceModel
    from main.models.vdvae import HierarchicalVAE
    from main.utils.config import plain

    dataset, pixel_preset, latent_preset = LATENT_PAIRS[name]
    torch.manual_seed(0)
    pixel_cfg = compose_preset(pixel_preset, dataset)
    size = pixel_cfg.dataset.image_size
    pixel = HierarchicalVAE(**plain(pixel_cfg.vae.model)).eval()
    autoencoder = KLAutoencoder(image_channels=3, channel_mults=[1, 2, 2]) if name == "32px" else DiffusersAutoencoder(SD_KL_F8)
    latent_model = {
        **plain(compose_preset(latent_preset, dataset).vae.model),
        "image_size": size // autoencoder.downsample_factor,
        "channels": autoencoder.latent_channels,
        "likelihood": "gaussian",
    }
    latent = LatentSpaceModel(HierarchicalVAE(**latent_model).eval(), autoencoder.eval(), size)
    batch, rounds = (16, 3 if quick else 7) if name == "32px" else (1, 2)
    times: dict[str, list[float]] = {"pixel": [], "latent": [], "latent_vae_only": []}
    with torch.no_grad():
        pixel.sample(batch), latent.sample(batch)  # warm-up
        for _ in range(rounds):  # interleaved, so load changes hit both alike
            times["pixel"] += timed(lambda: pixel.sample(batch), 1, warmup=0)
            times["latent"] += timed(lambda: latent.sample(batch), 1, warmup=0)
            times["latent_vae_only"] += timed(lambda: latent.vae.sample(batch), 1, warmup=0)
    median = {k: statistics.median(v) for k, v in times.items()}
    return {
        "resolution": size,
        "batch": batch,
        "pixel_preset": pixel_preset,
        "latent_preset": latent_preset,
        "pixel_params": sum(p.numel() for p in pixel.parameters()),
        "latent_vae_params": sum(p.numel() for p in latent.vae.parameters()),
        "autoencoder_params": sum(p.numel() for p in autoencoder.parameters()),
        "pixel_images_per_s": batch / median["pixel"],
        "latent_images_per_s": batch / median["latent"],
        "latent_speedup": median["pixel"] / median["latent"],
        "latent_decode_share": 1 - median["latent_vae_only"] / median["latent"],
        "seconds_all": times,
    }


def status_kib(field: str) -> int:
    """A field of /proc/self/status in KiB: VmRSS (resident now), VmHWM (its high-water mark), RssFile (file pages)."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(f"{field}:"))


class PeakMemory(pl.Callback):
    """Peak memory of training steps above what the process holds when training starts (module docstring).

    CUDA: torch.cuda.max_memory_allocated over all steps. CPU: the resident set's high-water mark over all but the
    last step (glibc's default malloc: ``rss_peak``), then over the last step with every allocation of 64 KiB or more
    mapped on its own and unmapped when freed (``peak``: the live tensors, as on CUDA).
    """

    def __init__(self, steps: int):
        self.last = steps - 1

    def on_train_start(self, trainer, pl_module) -> None:
        import torch

        self.device = pl_module.device
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline = torch.cuda.memory_allocated(self.device)
            return
        self.libc = ctypes.CDLL("libc.so.6")
        self.libc.malloc_trim(0)  # return the heap's free pages, so that the resident set is what is in use
        self.baseline, self.file_pages = self.reset_high_water_mark(), status_kib("RssFile") * 1024

    @staticmethod
    def reset_high_water_mark() -> int:
        """Set VmHWM to VmRSS and return it, in bytes."""
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return status_kib("VmRSS") * 1024

    def above_baseline(self) -> int:
        """The high-water mark above the baseline, less the pages of torch's libraries read in meanwhile (the first
        backward pass pages in its kernels' code, ~50 MB): not memory the steps use."""
        return status_kib("VmHWM") * 1024 - (status_kib("RssFile") * 1024 - self.file_pages) - self.baseline

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.device.type == "cuda" or batch_idx != self.last:
            return
        self.rss_peak = self.above_baseline()
        self.libc.mallopt(M_MMAP_THRESHOLD, 64 * 1024)
        self.libc.malloc_trim(0)
        self.reset_high_water_mark()

    def on_train_end(self, trainer, pl_module) -> None:
        import torch

        cuda = self.device.type == "cuda"
        self.peak = torch.cuda.max_memory_allocated(self.device) - self.baseline if cuda else self.above_baseline()


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
# memory: the models measured, as config group=preset, at batch 16 unless "@<batch>" follows (the UNets' presets train at 32)
MEMORY_MODELS = ["vae=cifar10_cpu", "vae=cifar10", "ddpm=cifar10_cpu", "ddpm=cifar10", "ddpm=cifar10@32"]
MEMORY_CONFIGS = [f"{model}:{mode}" for model in MEMORY_MODELS for mode in ("plain", "checkpointed")]


def training_system(model: str, overrides: tuple[str, ...] = ()) -> tuple[pl.LightningModule, str]:
    """The training system of "<group>=<preset>" (vae, or ddpm over a cifar10_cpu stage one with random weights), seeded,
    and the name of its trained module."""
    import torch

    from main.train_ae import build_system
    from main.train_ddpm import refiner_unet_kwargs

    group, preset = model.split("=")
    torch.manual_seed(0)
    if group == "vae":
        return build_system(compose_preset(preset, overrides=overrides)), "vae"
    cfg = compose_ddpm(preset, overrides=overrides)
    return refiner_system(cfg, refiner_unet_kwargs(cfg), cpu_vae()), "unet"


def measure_memory(name: str, quick: bool) -> dict:
    """One configuration ("<group>=<preset>[@<batch>]:plain|checkpointed"): peak training-step memory and step time."""
    model_at_batch, mode = name.split(":")
    model, _, batch = model_at_batch.partition("@")
    setting = f"{model.split('=')[0]}.activation_checkpointing={str(mode == 'checkpointed').lower()}"
    system, trained = training_system(model, (setting,))
    n_params = sum(p.numel() for p in getattr(system, trained).parameters())
    batch, warmup, steps = int(batch or 16), 1, 3
    meter = PeakMemory(warmup + steps + 1)  # the last step measures the live peak on the CPU, untimed
    times = fit_steps(system, batch, warmup + steps + 1, accelerator="auto", callbacks=[meter])[warmup : warmup + steps]
    cpu = meter.device.type == "cpu"
    return {
        "model": model,
        "activation_checkpointing": mode == "checkpointed",
        "batch": batch,
        "device": str(meter.device),
        "n_params": n_params,
        "step_s_median": statistics.median(times),
        "step_s_all": times,
        "peak_step_mb": meter.peak / 2**20,
        **({"peak_step_rss_default_malloc_mb": meter.rss_peak / 2**20} if cpu else {}),
        "baseline_mb": meter.baseline / 2**20,
        "gradients_and_adam_moments_mb": 3 * 4 * n_params / 2**20,  # fp32; part of every step's peak, checkpointed or not
    }


def memory_ratios(results: dict) -> dict:
    """Per model: plain and checkpointed peak step memory and median step time, and checkpointed / plain, from one run."""
    ratios = {}
    for model in MEMORY_MODELS:
        plain_run, checkpointed = (results.get(f"{model}:{mode}") for mode in ("plain", "checkpointed"))
        if plain_run and checkpointed:
            keys = [key for key in ("peak_step_mb", "peak_step_rss_default_malloc_mb", "step_s_median") if key in plain_run]
            ratios[model] = {
                key: {"plain": plain_run[key], "checkpointed": checkpointed[key], "ratio": checkpointed[key] / plain_run[key]}
                for key in keys
            }
    return ratios


PRECISION_MODELS = ["vae=cifar10_cpu", "ddpm=cifar10_cpu"]
PRECISION_SETTINGS = {"fp32": ("32-true", False), "bf16-mixed": ("bf16-mixed", False), "fp32_channels_last": ("32-true", True)}


def measure_precision(name: str, quick: bool, rounds: int = 3, steps: int = 3) -> dict:
    """One model ("<group>=<preset>"): its training step under each of PRECISION_SETTINGS, interleaved over rounds."""
    import torch

    medians: dict[str, list[float]] = {key: [] for key in PRECISION_SETTINGS}
    for _ in range(rounds):
        for key, (precision, channels_last) in PRECISION_SETTINGS.items():
            system, _ = training_system(name)
            if channels_last:
                system = system.to(memory_format=torch.channels_last)
            medians[key].append(statistics.median(fit_steps(system, 16, steps + 1, precision)[1:]))
    return {
        key: {
            "train_step_s_median": statistics.median(v),
            "speed_vs_fp32": statistics.median([fp32 / t for fp32, t in zip(medians["fp32"], v)]),
            "rounds": v,
        }
        for key, v in medians.items()
    }


# time_to_quality: test bits/dim (CIFAR-10 test set, EMA weights) against training wall-clock.
TARGET_BPD = 5.6  # openai/vdvae's recipe on the cifar10_cpu architecture after 2,000 steps x 16 (its own code and ours)
REFERENCE_STEPS = 2000
VDVAE_RECIPE = ("vae.optim.lr=2e-4", "vae.optim.warmup_steps=100", "vae.optim.ema_rate=0.9999")
QUALITY_RUNS = {  # name -> (precision, VAE overrides, training steps); every run trains the cifar10_cpu architecture at batch 16
    "cifar10_cpu": ("32-true", (), 600),  # the target asks for 5.6 within a quarter of the recipe's 2,000 steps
    "cifar10_cpu:bf16-mixed": ("bf16-mixed", (), 600),
    "vdvae_recipe": ("32-true", VDVAE_RECIPE, REFERENCE_STEPS),
}
QUALITY_EVERY, QUALITY_SUBSET = 100, 1000  # curve points every 100 steps on the first 1,000 test images (the same for every run)


def shared_cifar10() -> Path:
    """The offline CIFAR-10 copy: $GENVAE_SHARED_DATA, else ../shared/data beside the repository; one line when absent."""
    root = Path(os.environ.get("GENVAE_SHARED_DATA", ROOT.parent / "shared" / "data"))
    if not any(root.glob("cifar10_test*.npz")) and not (root / "cifar-10-batches-py").is_dir():
        sys.exit(f"time_to_quality needs CIFAR-10: no cifar10_test*.npz or cifar-10-batches-py in {root}; set GENVAE_SHARED_DATA")
    return root


class QualityProbe(pl.Callback):
    """A quality curve during training, with the training clock paused while it evaluates.

    Every ``every`` steps, and at the last step (``max_steps``), ``metric(system, point, last)`` returns its figures
    for the curve point {step, train_seconds} (``last``: whether it is the last step). Wall-clock is the training
    loop's (data loading, forward, backward, optimizer, EMA) from the first batch on."""

    def __init__(self, metric: Callable[[pl.LightningModule, dict, bool], dict], every: int, max_steps: int):
        self.metric, self.every, self.max_steps = metric, every, max_steps
        self.curve: list[dict] = []
        self.step_times: list[float] = []
        self.steps = 0
        self.train_seconds = 0.0

    def on_train_batch_start(self, *args) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        self.step_times.append(time.perf_counter() - self._start)
        self.train_seconds += self.step_times[-1]
        self.steps += 1
        if self.steps % self.every and self.steps != self.max_steps:
            return
        start = time.perf_counter()
        point = {"step": self.steps, "train_seconds": self.train_seconds}
        point.update(self.metric(pl_module, point, self.steps == self.max_steps))
        point.update(skipped_updates=int(pl_module.skipped_updates), eval_seconds=time.perf_counter() - start)
        self.curve.append(point)
        print(json.dumps(point), file=sys.stderr, flush=True)

    def timing(self) -> dict:
        """The run's steps and step times, for its JSON."""
        return {
            "steps": self.steps,
            "train_step_s_median": statistics.median(self.step_times),
            "train_step_s_mean": statistics.mean(self.step_times),
            "curve": self.curve,
        }


class BitsPerDimToTarget:
    """Stage one's curve metric: test bits/dim of the EMA weights on the first ``subset`` test images; the first time a
    point reaches ``target``, and at the last step, on the whole test set as well, and only the whole test set decides
    when the target is reached."""

    def __init__(self, test_images, subset: int, target: float):
        self.test_images, self.subset, self.target = test_images, subset, target
        self.steps_to_target = self.seconds_to_target = None

    def __call__(self, system, point: dict, last: bool) -> dict:
        figures = {"subset_bpd": ema_bits_per_dim(system, self.test_images[: self.subset])}
        if last or (self.steps_to_target is None and figures["subset_bpd"] <= self.target):
            figures["test_bpd"] = ema_bits_per_dim(system, self.test_images)
            if self.steps_to_target is None and figures["test_bpd"] <= self.target:
                self.steps_to_target, self.seconds_to_target = point["step"], point["train_seconds"]
        return figures


def ema_bits_per_dim(system, images, eval_batch: int = 500) -> float:
    """Mean bits/dim of uint8 ``images`` under a stage-one system's EMA weights, in fp32 whatever the training precision."""
    import torch

    total = 0.0
    with torch.no_grad(), torch.autocast(system.device.type, enabled=False):
        for batch in images.split(eval_batch):
            labels = torch.full((len(batch),), -1, device=system.device)
            total += float(system.ema_vae(batch.to(system.device), labels).bits_per_dim.sum())
    return total / len(images)


def fit_at_batch_16(system: pl.LightningModule, cfg, steps: int, precision: str = "32-true", callbacks=()) -> pl.Trainer:
    """Train ``system`` for ``steps`` steps at batch 16 on cfg's data set, shuffled from seed 0 (the same batches every run)."""
    from main.datasets.datamodule import build_datamodule

    trainer = bare_trainer(steps, precision, "cpu", list(callbacks))
    trainer.fit(system, datamodule=build_datamodule(cfg.dataset, batch_size=16, seed=0))
    return trainer


def measure_time_to_quality(name: str, quick: bool, extra: tuple[str, ...] = ()) -> dict:
    """One run of QUALITY_RUNS: the cifar10_cpu VAE trained on CIFAR-10 at batch 16, test bits/dim on the way (--quick:
    60 steps, 200 + 400 test images, to check the machinery); ``extra``: config overrides to try (--set)."""
    import torch

    from main.datasets.datamodule import first_images
    from main.train_ae import build_system
    from main.utils.config import plain

    precision, overrides, max_steps = QUALITY_RUNS[name]
    every, subset, n_test = (20, 200, 400) if quick else (QUALITY_EVERY, QUALITY_SUBSET, None)
    max_steps = 60 if quick else max_steps
    cfg = compose_preset("cifar10_cpu", overrides=(f"dataset.root={shared_cifar10()}", *overrides, *extra))
    pl.seed_everything(0, workers=True)
    system = build_system(cfg)
    test_images, _ = first_images(cfg.dataset, "test", n_test)
    bpd = BitsPerDimToTarget(test_images, subset, TARGET_BPD)
    probe = QualityProbe(bpd, every, max_steps)
    fit_at_batch_16(system, cfg, max_steps, precision, [probe])
    return {
        "precision": precision,
        "overrides": [*overrides, *extra],
        "optim": plain(cfg.vae.optim),
        "test_images": len(test_images),
        **probe.timing(),
        "target_bpd": TARGET_BPD,
        "steps_to_target": bpd.steps_to_target,
        "seconds_to_target": bpd.seconds_to_target,
        "torch_threads": torch.get_num_threads(),
    }


def time_to_quality_summary(results: dict) -> dict:
    """Our preset against VDVAE's recipe: the recipe needs REFERENCE_STEPS steps of the same architecture to reach the target,
    so its wall-clock is REFERENCE_STEPS of its mean step (or of ours, when it was not run: the same work per step; the
    mean, not the median, because seconds_to_target is a sum of steps, slow ones included); bf16 vs fp32 at equal steps."""
    ours = results.get("cifar10_cpu")
    if not ours:
        return {}
    reference = results.get("vdvae_recipe")
    step_s = (reference or ours)["train_step_s_mean"]
    summary = {
        "reference_seconds_to_target": REFERENCE_STEPS * step_s,
        "reference_step_time_from": "vdvae_recipe run" if reference else "cifar10_cpu run (same architecture and step)",
    }
    if reference:
        summary["reference_final_test_bpd"] = reference["curve"][-1].get("test_bpd")
    if ours["seconds_to_target"]:
        summary["ours_over_reference_wall_clock"] = ours["seconds_to_target"] / summary["reference_seconds_to_target"]
        summary["ours_over_reference_steps"] = ours["steps_to_target"] / REFERENCE_STEPS
    bf16 = results.get("cifar10_cpu:bf16-mixed")
    if bf16:
        for key in ("subset_bpd", "test_bpd"):  # the same images, so the difference is paired
            fp32_at = {p["step"]: p[key] for p in ours["curve"] if key in p}
            paired = [p for p in bf16["curve"] if p["step"] in fp32_at and key in p]
            summary[f"bf16_minus_fp32_{key}"] = {p["step"]: p[key] - fp32_at[p["step"]] for p in paired}
    return summary


# refiner_time_to_quality: the EMA refiner's L_simple in epsilon units (CIFAR-10 test images) against training wall-clock.
STAGE_ONE_STEPS = 400  # the stage one the refiners build on when no --stage-one is given: cifar10_cpu, batch 16, seed 0
DIFFUSEVAE_RECIPE = ("ddpm.optim.lr=2e-4", "ddpm.optim.warmup_steps=5000", "ddpm.optim.ema_rate=0.9999", "ddpm.diffusion.prediction=eps")
REFINER_RUNS = {  # name -> ddpm overrides; every run trains the ddpm=cifar10_cpu architecture at batch 16 for REFERENCE_STEPS
    "refiner_cpu": (),  # our preset as is: lr 1e-3, warm-up 200, EMA 0.999, v-prediction
    "diffusevae_recipe": DIFFUSEVAE_RECIPE,
    "refiner_cpu_eps": ("ddpm.diffusion.prediction=eps",),  # our optimizer settings with the recipe's parameterisation
}


class RefinerEpsilonLoss:
    """The refiner's curve metric, comparable between eps- and v-prediction: the EMA refiner's mean ||eps - eps_hat||^2
    per pixel over ``images``, eps_hat converted from its output by the diffusion (`output_to_xstart_eps`).

    The steps t, the noise and the stage-one conditions y (as in training, without conditioning dropout) are drawn once
    from ``seed`` and reused at every point, and by every run over the same stage one, so that differences are paired."""

    def __init__(self, system, images, labels, seed: int = 0, eval_batch: int = 250):
        import torch

        from main.utils.image_io import to_unit_range

        generator = torch.Generator(device=system.device).manual_seed(seed)
        t = torch.randint(0, system.diffusion.num_timesteps, (len(images),), generator=generator, device=system.device)
        noise = torch.randn(images.shape, generator=generator, device=system.device)
        with torch.autocast(system.device.type, enabled=False):
            batches = zip(images.to(system.device).split(eval_batch), labels.to(system.device).split(eval_batch))
            y = torch.cat([system.null_if_nonfinite(system.condition(x, c, generator)) for x, c in batches])
        self.draws = {"x_start": to_unit_range(images), "t": t, "noise": noise, "y": y, "labels": labels}
        self.eval_batch = eval_batch

    def __call__(self, system, point: dict | None = None, last: bool = False) -> dict:
        """{"eps_mse": ...} of the system's EMA refiner, in eval mode and fp32 whatever the training precision."""
        import torch

        from main.models.diffusion.guidance import ConditionedDenoiser, class_labels_for

        unet, device = system.ema.module, system.device
        mode = unet.training
        unet.eval()
        total = 0.0
        with torch.no_grad(), torch.autocast(device.type, enabled=False):
            for x_start, t, noise, y, labels in zip(*(v.to(device).split(self.eval_batch) for v in self.draws.values())):
                denoiser = ConditionedDenoiser(unet, class_labels_for(unet, labels, len(x_start), device))
                total += float(epsilon_mse(system.diffusion, denoiser, x_start, t, noise, y).sum())
        unet.train(mode)
        return {"eps_mse": total / len(self.draws["x_start"])}


def epsilon_mse(diffusion, model, x_start, t, noise, y):
    """Per-image mean ||noise - eps_hat||^2 [N] of ``model`` (called as in training) at steps t, whatever it predicts."""
    x_t = diffusion.q_sample(x_start, t, y, noise)
    output = model(diffusion.model_input(x_t, y), diffusion.map_timesteps(t))
    eps_hat = diffusion.output_to_xstart_eps(output, x_t, t, y)[1]
    return (noise - eps_hat).pow(2).flatten(1).mean(dim=1)


def train_stage_one(root: Path, steps: int, path: Path) -> Path:
    """The cifar10_cpu stage one trained on the CIFAR-10 at ``root`` for ``steps`` steps at batch 16, seeded (so every run
    on one machine gets the same one), saved at ``path``."""
    from main.train_ae import build_system

    cfg = compose_preset("cifar10_cpu", overrides=(f"dataset.root={root}",))
    pl.seed_everything(0, workers=True)
    fit_at_batch_16(build_system(cfg), cfg, steps).save_checkpoint(path)
    return path


def measure_refiner_time_to_quality(name: str, quick: bool, stage_one: str | None = None) -> dict:
    """One run of REFINER_RUNS: the ddpm=cifar10_cpu refiner trained on CIFAR-10 at batch 16 over the stage one at
    ``stage_one`` (None: over one trained here for STAGE_ONE_STEPS), its RefinerEpsilonLoss on the way (--quick: 3 steps,
    32 test images, over a 1-step stage one, to check the machinery)."""
    import torch

    from main.datasets.datamodule import first_images
    from main.systems.stage_one import load_stage_one
    from main.train_ddpm import build_system
    from main.utils.config import plain

    root = shared_cifar10()
    steps, every, n_test, stage_one_steps = (3, 2, 32, 1) if quick else (REFERENCE_STEPS, QUALITY_EVERY, QUALITY_SUBSET, STAGE_ONE_STEPS)
    cfg = compose_ddpm("cifar10_cpu", (f"dataset.root={root}", *REFINER_RUNS[name]))
    test_images, labels = first_images(cfg.dataset, "test", n_test)
    with tempfile.TemporaryDirectory() as tmp:
        cfg.stage_one = stage_one or str(train_stage_one(root, stage_one_steps, Path(tmp) / "stage_one.ckpt"))
        vae_system, checkpoint = load_stage_one(cfg.stage_one)
        torch.manual_seed(0)  # its posterior draws: the same figure for the same stage one in every run
        stage_one_result = {
            "checkpoint": stage_one or f"trained here: vae=cifar10_cpu, batch 16, seed 0, {stage_one_steps} steps",
            "global_step": checkpoint.get("global_step"),
            "ema_subset_bpd": ema_bits_per_dim(vae_system, test_images),
        }
        pl.seed_everything(0, workers=True)
        system = build_system(cfg)
    probe = QualityProbe(RefinerEpsilonLoss(system, test_images, labels), every, steps)
    fit_at_batch_16(system, cfg, steps, callbacks=[probe])
    return {
        "precision": "32-true",
        "overrides": list(REFINER_RUNS[name]),
        "optim": plain(cfg.ddpm.optim),
        "prediction": cfg.ddpm.diffusion.prediction,
        "stage_one": stage_one_result,
        "test_images": len(test_images),
        **probe.timing(),
        "final_eps_mse": probe.curve[-1]["eps_mse"],
        "torch_threads": torch.get_num_threads(),
    }


def refiner_time_to_quality_summary(results: dict) -> dict:
    """Our runs against DiffuseVAE's recipe: the target is the recipe's final eps_mse; per run of ours
    ("<run>_..."), the steps and training seconds of its first curve point that reaches it (None: never), over the
    recipe's steps and its wall-clock (its steps at its mean step)."""
    summary = {f"{name}_final_eps_mse": run["final_eps_mse"] for name, run in results.items()}
    recipe = results.get("diffusevae_recipe")
    ours = {name: run for name, run in results.items() if name != "diffusevae_recipe"}
    if not (ours and recipe):
        return summary
    target = recipe["final_eps_mse"]
    recipe_seconds = recipe["steps"] * recipe["train_step_s_mean"]
    summary.update(
        same_stage_one=all(run["stage_one"]["ema_subset_bpd"] == recipe["stage_one"]["ema_subset_bpd"] for run in ours.values()),
        target_eps_mse=target,
        recipe_steps=recipe["steps"],
        recipe_train_seconds=recipe_seconds,
    )
    for name, run in ours.items():
        reached = next((point for point in run["curve"] if point["eps_mse"] <= target), None)
        summary[f"{name}_steps_to_target"] = reached and reached["step"]
        summary[f"{name}_seconds_to_target"] = reached and reached["train_seconds"]
        summary[f"{name}_over_recipe_steps"] = reached and reached["step"] / recipe["steps"]
        summary[f"{name}_over_recipe_wall_clock"] = reached and reached["train_seconds"] / recipe_seconds
    return summary


# presets: every published preset's training step at its own batch size, estimated on the meta device
# (scripts/memory_estimate.py). folder and npz are the cifar10_cpu presets; the small latent presets need a trained autoencoder.
PRESET_SKIP = {"folder", "npz", "cifar10_latent_cpu", "digits_latent"}
PRESET_MODELS = [
    f"{group}={path.stem}" for group in ("vae", "ddpm") for path in sorted((ROOT / "main" / "configs" / group).glob("*.yaml"))
    if path.stem not in PRESET_SKIP
]  # fmt: skip
PRESET_DATASETS = {"cifar10_cpu": "cifar10", "celebahq128": "celebahq256", "ffhq128": "ffhq256"}  # where the names differ
RESIZED = {"celebahq128": 128, "ffhq128": 128}  # refiners of a resized data set, which no VAE preset models: no stage one
CARDS_GB = (16, 24, 40, 80)
CARD_RESERVE_GB, CARD_OVERHEAD = 1.0, 1.1  # the CUDA context and cuDNN's workspaces; the caching allocator's fragmentation


def preset_step(model: str, checkpointed: bool, batch: int | None = None, vae: dict | None = None):
    """(system, trained module, batch, loss closure) of "<group>=<preset>" on the meta device, at the preset's batch size
    unless ``batch`` is given. A refiner runs over the VAE of kwargs ``vae``, else the VAE preset of the same name (random
    weights; at 128 px, where no VAE preset fits, unconditional); a latent VAE models Stable Diffusion's KL-f8 latents,
    that autoencoder held frozen."""
    import torch

    from main.train_ae import build_system
    from main.train_ddpm import refiner_unet_kwargs
    from main.utils.config import plain

    group, preset = model.split("=")
    latent = preset.endswith("_latent")
    dataset = PRESET_DATASETS.get(preset, preset.removesuffix("_latent"))
    overrides = [f"{group}.activation_checkpointing={str(checkpointed).lower()}"]
    with torch.device("meta"):
        if group == "vae":
            cfg = compose_preset(preset, dataset, tuple(overrides))
            spec = {"kind": "diffusers", "config": SD_KL_F8} if latent else None
            model_kwargs = {**plain(cfg.vae.model), "image_size": cfg.dataset.image_size // 8, "channels": 4, "likelihood": "gaussian"}
            system = build_system(cfg, model_kwargs if latent else None, spec)
            trained, batch = system.vae, batch or cfg.vae.batch_size
            shape = (system.vae.channels, system.vae.image_size, system.vae.image_size)
            x = torch.randn(batch, *shape) if latent else torch.randint(0, 256, (batch, *shape), dtype=torch.uint8)
        else:
            if preset in RESIZED:
                overrides += [f"dataset.image_size={RESIZED[preset]}", "ddpm.diffusion.formulation=unconditional"]
            cfg = compose_ddpm(preset, tuple(overrides), dataset)
            stage_one = None if preset in RESIZED else vae or plain(compose_preset(preset, dataset).vae.model)
            system = refiner_system(cfg, refiner_unet_kwargs(cfg), stage_one)
            trained, batch = system.unet, batch or cfg.ddpm.batch_size
            x = torch.randint(0, 256, (batch, cfg.dataset.channels, cfg.dataset.image_size, cfg.dataset.image_size), dtype=torch.uint8)
        labels = torch.zeros(batch, dtype=torch.long)
    system.train()
    if group == "vae":
        return system, trained, batch, lambda: system.vae(x, labels).loss.mean()
    return system, trained, batch, lambda: system.loss(system.unet, x, labels).mean()


def card_fit(total_mb: float) -> dict[str, bool]:
    """Whether a step of ``total_mb`` fits each card, with CARD_OVERHEAD and CARD_RESERVE_GB to spare."""
    need_gb = total_mb * CARD_OVERHEAD / 1024 + CARD_RESERVE_GB
    return {f"{card}GB": need_gb <= card for card in CARDS_GB}


def measure_preset(name: str, quick: bool) -> dict:
    """One "<group>=<preset>", estimated at its batch size plain and checkpointed; or "check:<memory suite config>": the
    memory suite's measurement (batch 16), then the estimate of the same step and estimate / measured."""
    from scripts.memory_estimate import step_memory

    if name.startswith("check:"):
        measured = measure_memory(name.removeprefix("check:"), quick)
        system, trained, _, loss = preset_step(measured["model"], measured["activation_checkpointing"], measured["batch"], cpu_vae())
        estimate = step_memory(system, trained, loss)
        ratio = estimate["peak_above_weights_mb"] / measured["peak_step_mb"]
        return {"measured": measured, "estimate": estimate, "estimate_over_measured": ratio}
    result: dict = {"model": name}
    for mode in ("plain", "checkpointed"):
        system, trained, batch, loss = preset_step(name, mode == "checkpointed")
        result[mode] = {**step_memory(system, trained, loss), "batch": batch}
        result[mode]["fits"] = card_fit(result[mode]["total_mb"])
    result["n_params"] = sum(p.numel() for p in trained.parameters())
    return result


CPU_MEMORY_CONFIGS = [c for c in MEMORY_CONFIGS if c.split(":")[0].endswith("_cpu")]
PRESET_CHECKS = [f"check:{config}" for config in CPU_MEMORY_CONFIGS]  # presets: the estimate against a measured step
SUITES = {
    "stage1": (list(PRESETS), measure_stage1),
    "stage2": (UNET_PRESETS, measure_stage2),
    "latent": (list(LATENT_PAIRS), measure_latent),
    "memory": (MEMORY_CONFIGS, measure_memory),
    "presets": (PRESET_MODELS + PRESET_CHECKS, measure_preset),
    "precision": (PRECISION_MODELS, measure_precision),
    "time_to_quality": (list(QUALITY_RUNS), measure_time_to_quality),
    "refiner_time_to_quality": (list(REFINER_RUNS), measure_refiner_time_to_quality),
}
QUICK = {  # other suites: their first (small) preset
    "refiner_time_to_quality": ["refiner_cpu", "diffusevae_recipe"],  # both: the summary compares them
    "memory": CPU_MEMORY_CONFIGS,
    "presets": ["vae=cifar10_cpu", "vae=ffhq256", *PRESET_CHECKS],
}


def cpu_model() -> str:
    """The CPU's model name, as lscpu reports it."""
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), "unknown")


def measure_in_this_process(suite: str, name: str, quick: bool, **options) -> dict:
    """One preset of a suite (``options``: the suite's own, --set's overrides or --stage-one), with the machine's load
    around it and this process's peak memory."""
    load_before = load_average()
    result = SUITES[suite][1](name, quick, **options)
    result.update(
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        load_average_before=load_before,
        load_average_after=load_average(),
    )
    return result


def suite_options(args: argparse.Namespace) -> dict:
    """The keyword arguments of the suite's measure function that the command line sets."""
    return {**({"extra": tuple(args.set)} if args.set else {}), **({"stage_one": args.stage_one} if args.stage_one else {})}


@exit_on_user_error
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("suite", choices=list(SUITES))
    parser.add_argument("--quick", action="store_true", help="small presets only, fewer steps")
    parser.add_argument("--preset", help="measure only this preset of the suite, in this process")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="time_to_quality: a config override for all runs, e.g. vae.optim.lr=2e-3",
    )
    parser.add_argument(
        "--stage-one",
        metavar="PATH",
        help=f"refiner_time_to_quality: the stage-one checkpoint every run refines (default: each run trains vae=cifar10_cpu "
        f"for {STAGE_ONE_STEPS} steps, seeded, so all get the same)",
    )
    parser.add_argument(
        "--parallel",
        action="store_true",
        help="start all runs at once, one process each (for the time-to-quality suites on a machine with a core per run)",
    )
    args = parser.parse_args()
    presets = SUITES[args.suite][0]
    if args.set and args.suite != "time_to_quality":
        parser.error("--set only applies to time_to_quality")
    if args.stage_one and args.suite != "refiner_time_to_quality":
        parser.error("--stage-one only applies to refiner_time_to_quality")
    if args.stage_one:
        load_checkpoint(args.stage_one, "vae")  # a wrong file is one line before any run starts
    if args.preset:
        if args.preset not in presets:
            parser.error(f"--preset must be one of {', '.join(presets)} for {args.suite}")
        print(json.dumps(measure_in_this_process(args.suite, args.preset, args.quick, **suite_options(args))))
        return
    import torch

    if args.suite.endswith("time_to_quality"):
        shared_cifar10()  # before any run starts
    report = {
        "suite": args.suite,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "unset"),
        "results": {},
    }
    flags = ["--quick"] if args.quick else []
    flags += [f"--set={override}" for override in args.set] + ([f"--stage-one={args.stage_one}"] if args.stage_one else [])

    def start(name: str) -> subprocess.Popen:
        """A run in its own process; its progress and errors go to our stderr, its JSON to our pipe."""
        return subprocess.Popen([sys.executable, __file__, args.suite, "--preset", name, *flags], stdout=subprocess.PIPE, text=True)

    names = QUICK.get(args.suite, presets[:1]) if args.quick else presets
    started = {name: start(name) for name in names} if args.parallel else {}
    for name in names:
        run = started.get(name) or start(name)
        out = run.communicate()[0]
        if run.returncode:
            sys.exit(f"{args.suite} --preset {name} failed with exit status {run.returncode}: its error is above")
        report["results"][name] = json.loads(out.strip().splitlines()[-1])
    if args.suite == "memory":
        report["ratios"] = memory_ratios(report["results"])
    if args.suite == "time_to_quality":
        report["summary"] = time_to_quality_summary(report["results"])
    if args.suite == "refiner_time_to_quality":
        report["summary"] = refiner_time_to_quality_summary(report["results"])
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
