"""The config groups chosen on the command line: trainer/, debug/, experiment/ and hparams_search/."""

from __future__ import annotations

import re
import shlex

import pytest
from helpers import CONFIGS, ROOT, compose_config, tiny_train_config
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf, open_dict

from main.train_ae import train
from main.utils.config import plain
from main.utils.errors import check_command_line


def resolved(entry_point: str, overrides: list[str]) -> dict:
    """The config a run of ``entry_point`` gets, resolved as in the run (Hydra's own values, such as the choices that
    name the run, included)."""
    cfg = compose_config(entry_point, overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    try:
        with open_dict(cfg):
            del cfg["hydra"]
        return OmegaConf.to_container(cfg, resolve=True)
    finally:
        HydraConfig.instance().cfg = None


def quickstart_overrides(script: str) -> list[str]:
    """The overrides scripts/quickstart.sh passes to main/<script>, its variables at their defaults."""
    text = (ROOT / "scripts" / "quickstart.sh").read_text().replace("\\\n", " ")
    line = next(line for line in text.splitlines() if f"main/{script}" in line)
    words = shlex.split(line.split(f"main/{script}", 1)[1])
    words = [re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", word).replace("$out", "outputs/quickstart") for word in words if word != "$@"]
    assert not any("$" in word for word in words), words
    return words


@pytest.mark.parametrize(
    ("option", "expected"),
    [
        ("cpu", {"accelerator": "cpu", "devices": 1, "strategy": "auto"}),
        ("gpu", {"accelerator": "gpu", "devices": 1, "strategy": "auto"}),
        ("ddp", {"accelerator": "gpu", "devices": 2, "num_nodes": 1, "strategy": "ddp"}),
        ("ddp_multinode", {"accelerator": "gpu", "devices": 8, "num_nodes": 2, "strategy": "ddp"}),
    ],
)
def test_trainer_options_compose_on_the_shared_defaults(option, expected):
    trainer = plain(compose_config("train_ddpm", [f"trainer={option}", "stage_one=x"]).trainer)
    assert {key: trainer[key] for key in expected} == expected
    assert trainer["max_steps"] == 100000 and trainer["val_check_interval"] == 1000  # the rest from trainer/default.yaml


@pytest.mark.parametrize(
    ("option", "expected"),
    [
        ("fast_dev_run", {"fast_dev_run": True}),
        ("overfit", {"overfit_batches": 3}),
        ("profiler", {"profiler": "simple"}),
        ("anomaly", {"detect_anomaly": True}),
        ("limit", {"limit_train_batches": 5, "limit_val_batches": 2, "max_steps": 20}),
    ],
)
def test_debug_options_run_one_process_in_a_folder_of_their_own(option, expected):
    cfg = compose_config("train_ae", [f"debug={option}", "name=x"])
    assert {key: cfg.trainer[key] for key in expected} == expected
    assert (cfg.trainer.devices, cfg.num_workers) == (1, 0)
    assert re.fullmatch(r"outputs/debug/x/\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d", cfg.run_dir)


def test_fast_dev_run_runs_a_batch_and_writes_no_checkpoint(tmp_path):
    last = train(tiny_train_config(tmp_path, "debug=fast_dev_run", f"run_dir={tmp_path}"))
    assert not last.exists() and not list(tmp_path.rglob("*.ckpt"))


def test_overfit_trains_on_its_batches_and_checkpoints(tmp_path):
    """Lightning serves the overfitted batches in order, without the resumable order the checkpoints record."""
    train(tiny_train_config(tmp_path, "debug=overfit", f"run_dir={tmp_path}", "trainer.max_steps=4", "trainer.val_check_interval=2"))
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.parametrize(("experiment", "script"), [("quickstart_stage_one", "train_ae.py"), ("quickstart_stage_two", "train_ddpm.py")])
def test_quickstart_experiments_are_the_quickstart_s_commands(experiment, script):
    entry_point = script.removesuffix(".py")
    assert resolved(entry_point, [f"+experiment={experiment}"]) == resolved(entry_point, quickstart_overrides(script))


@pytest.mark.parametrize(
    ("entry_point", "experiment", "command"),
    [  # the README's command lines (their dataset.root aside)
        (
            "train_ae",
            "cifar10_cpu_stage_one",
            "dataset=cifar10 vae=cifar10_cpu name=cifar10-cpu-30min num_workers=0 trainer.max_time=00:00:30:00 "
            "trainer.val_check_interval=500 trainer.limit_val_batches=25",
        ),
        (
            "train_ddpm",
            "cifar10_cpu_stage_two",
            "dataset=cifar10 ddpm=cifar10_cpu stage_one=outputs/cifar10-cpu-30min/checkpoints/last.ckpt name=cifar10-refiner "
            "num_workers=0 trainer.max_steps=600 trainer.val_check_interval=300 trainer.limit_val_batches=5",
        ),
        (
            "train_ae",
            "vdvae_cifar10",
            "dataset=cifar10 vae=cifar10 trainer.accelerator=gpu trainer.devices=2 trainer.strategy=ddp name=vdvae-cifar10",
        ),
        (
            "train_ddpm",
            "diffusevae_cifar10",
            "dataset=cifar10 ddpm=cifar10 trainer.accelerator=gpu trainer.devices=1 name=diffusevae-cifar10 "
            "stage_one=outputs/vdvae-cifar10/checkpoints/last.ckpt",
        ),
    ],
)
def test_experiments_are_their_command_lines(entry_point, experiment, command):
    assert resolved(entry_point, [f"+experiment={experiment}"]) == resolved(entry_point, command.split())


def test_the_optuna_search_searches_stage_one_s_optimiser():
    cfg = compose_config("train_ae", ["hparams_search=vae_optuna", "name=x"], return_hydra_config=True)
    assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper") and cfg.hydra.sweeper.direction == "minimize"
    assert set(cfg.hydra.sweeper.params) == {"vae.optim.lr", "vae.optim.warmup_steps", "vae.optim.ema_rate"}


def test_the_slurm_ddp_launcher_sizes_the_job_like_the_trainer():
    cfg = compose_config(
        "train_ae", ["hydra/launcher=slurm_ddp", "trainer=ddp_multinode", "trainer.num_nodes=4", "name=x"], return_hydra_config=True
    )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (4, 8, 8)  # one task per GPU


@pytest.mark.parametrize("launcher", ["submitit_local", "submitit_slurm", "slurm_ddp"])
def test_the_command_line_check_accepts_hydra_s_plugin_groups(launcher):
    check_command_line(CONFIGS, [f"hydra/launcher={launcher}"], "train_ae")
