"""Shared helpers for tests: composing the project's Hydra configs and tiny training runs."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "main" / "configs"

# A digits model small enough to train in seconds.
TINY_DIGITS = [
    "dataset=digits",
    "vae=digits",
    "vae.model.width=16",
    "vae.model.zdim=4",
    "vae.model.num_mixtures=2",
    "vae.optim.warmup_steps=10",
    "num_workers=0",
    "logger=csv",
    "samples.every_n_steps=0",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "trainer.accelerator=cpu",
    "trainer.devices=1",
]


def compose_config(name: str, overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(config_name=name, overrides=overrides)


def tiny_train_config(run_dir: Path, *overrides: str) -> DictConfig:
    return compose_config("train_ae", [*TINY_DIGITS, f"run_dir={run_dir}", "name=test", *overrides])
