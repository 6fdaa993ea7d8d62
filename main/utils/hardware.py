"""`trainer.precision: auto` and `channels_last: auto`: the fast paths this machine has, chosen by measured rules.

The choice is a pure function of a `DeviceInfo` (so every branch is testable without the hardware); `device_info`
gathers one from the machine. Figures behind the CPU rules: docs/benchmarks.md, "Precision and memory layout on this CPU".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from lightning.pytorch.utilities import rank_zero_info
from omegaconf import DictConfig

from main.utils.errors import UserError

AUTO = "auto"


@dataclass(frozen=True)
class DeviceInfo:
    """What the training device offers. device: "cuda", "mps" or "cpu"; cpu_capability: the kernels PyTorch dispatches
    to on the CPU (torch.backends.cpu.get_cpu_capability(): DEFAULT, AVX2, AVX512, ...); cpu_flags: /proc/cpuinfo's."""

    device: str
    cuda_bf16: bool = False
    cpu_capability: str = "DEFAULT"
    cpu_flags: frozenset[str] = field(default_factory=frozenset)

    def describe(self) -> str:
        if self.device == "cuda":
            return f"CUDA GPU ({'with' if self.cuda_bf16 else 'without'} bf16)"
        if self.device == "mps":
            return "Apple GPU (MPS)"
        bf16 = [flag for flag in ("amx_bf16", "avx512_bf16") if flag in self.cpu_flags]
        return f"CPU ({self.cpu_capability}{''.join(f', {flag}' for flag in bf16)})"


def choose_precision(stage: str, info: DeviceInfo) -> str:
    """Lightning's precision for training ``stage`` ("vae", "ddpm" or "autoencoder") on ``info``'s device.

    GPUs: bf16-mixed where supported (no loss scaling needed), else 16-mixed. CPUs: bf16-mixed where they have bf16
    instructions (AMX tiles, or AVX-512-bf16), else fp32. Without AMX this was measured (`bash scripts/bench.sh
    precision`): on an AMD EPYC (AVX512 capability, avx512_bf16, no AMX), 1 thread, batch 16, a real training step,
    bf16-mixed was 1.11x as fast as fp32 for vae=cifar10_cpu and 1.31x for ddpm=cifar10_cpu (3 interleaved rounds;
    1.16x and 1.33x over 7). On AVX2 CPUs bf16 is emulated: ~5x slower. MPS: fp32 (its bf16 autocast is incomplete).
    """
    del stage  # the measured rules are the same for every stage
    if info.device == "cuda":
        return "bf16-mixed" if info.cuda_bf16 else "16-mixed"
    if info.device == "cpu" and info.cpu_flags & {"amx_bf16", "avx512_bf16"}:
        return "bf16-mixed"
    return "32-true"


def choose_channels_last(stage: str, info: DeviceInfo) -> bool:
    """Whether to train ``stage`` in channels_last memory layout on ``info``'s device.

    GPUs: yes (tensor cores read NHWC). CPUs: no, as no gain showed consistently: on the same AMD EPYC, fp32, 1 thread,
    channels_last was 1.03x as fast as NCHW for vae=cifar10_cpu and 0.99x for ddpm=cifar10_cpu (3 rounds; over 7 rounds
    1.45x, with rounds from 0.52x to 2.2x, and 0.99x); 1.2x slower on an AVX2 CPU.
    """
    del stage
    return info.device == "cuda"


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none, e.g. macOS)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    line = next((line for line in text.splitlines() if line.startswith("flags")), "")
    return frozenset(line.partition(":")[2].split())


def device_info(accelerator: str) -> DeviceInfo:
    """This machine's `DeviceInfo` for a Trainer of ``accelerator`` (auto picks CUDA, then MPS, then the CPU, as
    Lightning does)."""
    cuda = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if cuda:
        return DeviceInfo("cuda", cuda_bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if accelerator == "mps" or (accelerator == "auto" and torch.backends.mps.is_available()):
        return DeviceInfo("mps")
    return DeviceInfo("cpu", cpu_capability=torch.backends.cpu.get_cpu_capability(), cpu_flags=cpu_flags())


def resolve_auto(cfg: DictConfig) -> None:
    """Replace `auto` in cfg.trainer.precision and cfg.channels_last by this machine's choice, in place (so the run's
    recorded config and checkpoints hold what was used), and say in one line what the run trains with."""
    stage = next(name for name in ("ddpm", "vae", "autoencoder") if name in cfg)
    if not isinstance(cfg.channels_last, bool) and cfg.channels_last != AUTO:
        raise UserError(f"channels_last={cfg.channels_last} is not a setting: use true, false or auto")
    info = device_info(str(cfg.trainer.accelerator))
    precision, channels_last = str(cfg.trainer.precision) == AUTO, cfg.channels_last == AUTO
    if precision:
        cfg.trainer.precision = choose_precision(stage, info)
    if channels_last:
        cfg.channels_last = choose_channels_last(stage, info)
    rank_zero_info(
        f"training in trainer.precision={cfg.trainer.precision}{' (auto)' if precision else ''}, "
        f"channels_last={str(cfg.channels_last).lower()}{' (auto)' if channels_last else ''} on {info.describe()}"
    )
