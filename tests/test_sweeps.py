"""Sweeps (-m): every job in its own folder, a summary of all jobs, the objective sweepers minimise; the submitit
launcher and the Optuna search for real."""

from __future__ import annotations

import csv
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import CONFIGS, QUIET_CPU_TRAINING, ROOT, TINY_DIGITS, TINY_REFINER, tiny_refiner_config, tiny_train_config
from hydra.core.hydra_config import HydraConfig

from main.train_ae import train as train_stage_one
from main.train_ddpm import train as train_refiner
from main.utils.checkpoint import load_checkpoint
from main.utils.config import job_name

TINY_VAE_MODEL = [arg for arg in TINY_DIGITS if arg.startswith("vae.model.")]
TWO_STEPS = ["trainer.max_steps=2", "trainer.val_check_interval=2"]


@pytest.fixture(scope="module")
def stage_one(tmp_path_factory) -> Path:
    return train_stage_one(tiny_train_config(tmp_path_factory.mktemp("vae"), "trainer.max_steps=4", "trainer.val_check_interval=4"))


@pytest.fixture(scope="module")
def refiner(tmp_path_factory, stage_one) -> Path:
    return train_refiner(
        tiny_refiner_config(tmp_path_factory.mktemp("ddpm"), stage_one, "trainer.max_steps=4", "trainer.val_check_interval=4")
    )


def sweep(monkeypatch, entry_point: str, *args: str) -> None:
    """Run ``python main/<entry_point>.py -m <args>`` in this process (the imports are paid once)."""
    monkeypatch.setattr(sys, "argv", [f"main/{entry_point}.py", "-m", f"--config-path={CONFIGS}", *args])
    try:
        importlib.import_module(f"main.{entry_point}").main()
    finally:
        HydraConfig.instance().cfg = None  # the sweep's config would make later runs of this process look like sweep jobs


def summary(sweep_dir: Path) -> list[dict]:
    with open(sweep_dir / "sweep_summary.csv", newline="") as file:
        return list(csv.DictReader(file))


def metrics(folder: Path) -> dict:
    return json.loads((folder / "results.json").read_text())["metrics"]


def test_a_training_sweep_gives_every_job_its_own_run_folder_and_a_summary(monkeypatch, tmp_path, capsys):
    sweep(monkeypatch, "train_ae", f"hydra.sweep.dir={tmp_path}", "vae.optim.lr=1e-3,2e-3", "trainer.max_steps=2", *TINY_DIGITS)
    folders = ["0_vae.optim.lr=0.001", "1_vae.optim.lr=0.002"]  # named by job and the override that varies
    for folder in folders:
        assert (tmp_path / folder / "checkpoints" / "last.ckpt").is_file()
        assert (tmp_path / folder / ".hydra" / "config.yaml").is_file()
    rows = summary(tmp_path)
    assert [row["folder"] for row in rows] == folders
    assert [row["overrides"] for row in rows] == ["vae.optim.lr=0.001", "vae.optim.lr=0.002"]
    assert [row["status"] for row in rows] == ["COMPLETED", "COMPLETED"]
    for row, folder in zip(rows, folders):
        final = metrics(tmp_path / folder)
        assert final["global_step"] == 2  # validated at the end, though val_check_interval is 1000
        assert float(row["objective"]) == pytest.approx(final["val/bpd_given_label"])  # what train_ae.py returned
        assert float(row["val/bpd_given_label"]) == pytest.approx(final["val/bpd_given_label"]) and float(row["wall_seconds"]) > 0
    assert "├── trainer" in capsys.readouterr().out  # the resolved config, printed as a tree at the start of each job


def test_a_stage_one_sweep_minimises_the_bits_per_dim_each_model_logs(monkeypatch, tmp_path):
    """An unconditional model's val/bpd (-log p(x)); a class-conditional one's val/bpd_given_label (-log p(x|c)), which
    its best.ckpt follows too."""
    sweep(monkeypatch, "train_ae", f"hydra.sweep.dir={tmp_path}", "vae.model.num_classes=0,10", *TINY_DIGITS, *TWO_STEPS)
    rows = {row["overrides"]: row for row in summary(tmp_path)}
    for classes, logged, other in [("0", "val/bpd", "val/bpd_given_label"), ("10", "val/bpd_given_label", "val/bpd")]:
        row = rows[f"vae.model.num_classes={classes}"]
        final = metrics(tmp_path / row["folder"])
        assert float(row["objective"]) == pytest.approx(final[logged]) and other not in final
        best = load_checkpoint(tmp_path / row["folder"] / "checkpoints" / "best.ckpt", "vae")
        assert [state["monitor"] for key, state in best["callbacks"].items() if "RunCheckpoint" in key] == [logged, None]


def test_a_refiner_sweep_returns_the_validation_loss(monkeypatch, tmp_path, stage_one):
    sweep(
        monkeypatch, "train_ddpm", f"hydra.sweep.dir={tmp_path}", f"stage_one={stage_one}", "seed=0,1", "trainer.max_steps=2", *TINY_REFINER
    )
    rows = summary(tmp_path)
    assert [row["folder"] for row in rows] == ["0_seed=0", "1_seed=1"]
    for row in rows:
        assert (tmp_path / row["folder"] / "checkpoints" / "last.ckpt").is_file()
        assert float(row["objective"]) == pytest.approx(metrics(tmp_path / row["folder"])["val/loss"])


def test_an_evaluation_sweep_writes_each_job_to_its_own_out_dir(monkeypatch, tmp_path, stage_one):
    overrides = ["tasks=[bpd,samples]", "samples.n=4", "num_workers=0", "device=cpu"]
    sweep(monkeypatch, "test_ae", f"hydra.sweep.dir={tmp_path}", f"checkpoint={stage_one}", "samples.temperature=0.5,1.0", *overrides)
    rows = summary(tmp_path)
    assert [row["folder"] for row in rows] == ["0_samples.temperature=0.5", "1_samples.temperature=1.0"]
    for row in rows:
        assert len(list((tmp_path / row["folder"] / "samples").glob("*.png"))) == 4
        assert float(row["objective"]) == pytest.approx(metrics(tmp_path / row["folder"])["test_bpd"])
        assert float(row["test_bpd"]) == pytest.approx(float(row["objective"]))


def test_a_two_stage_sampling_sweep_writes_each_job_to_its_own_out_dir(monkeypatch, tmp_path, refiner):
    overrides = ["samples.n=2", "batch_size=2", "num_workers=0", "accelerator=cpu"]
    sweep(monkeypatch, "test_ddpm", f"hydra.sweep.dir={tmp_path}", f"checkpoint={refiner}", "sampler.steps=2,3", *overrides)
    rows = summary(tmp_path)
    assert [(row["folder"], row["status"]) for row in rows] == [("0_sampler.steps=2", "COMPLETED"), ("1_sampler.steps=3", "COMPLETED")]
    for row in rows:
        assert len(list((tmp_path / row["folder"] / "samples").glob("*.png"))) == 2


def test_lightning_started_ddp_processes_are_refused_in_a_sweep(monkeypatch, tmp_path, capsys):
    ddp = ["trainer.strategy=ddp", "trainer.devices=2"]  # after TINY_DIGITS' trainer.devices=1
    with pytest.raises(SystemExit) as exit_info:
        sweep(monkeypatch, "train_ae", f"hydra.sweep.dir={tmp_path}", "seed=0,1", "trainer.max_steps=2", *TINY_DIGITS, *ddp)
    assert exit_info.value.code == 2
    error = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "trainer.devices=2 in a sweep (-m)" in error[0] and "hydra/launcher=slurm_ddp" in error[0]
    assert not list(tmp_path.glob("*/checkpoints"))


def test_the_optuna_search_minimises_the_validation_bpd_its_trials_return(monkeypatch, tmp_path):
    trials = ["hydra.sweeper.n_trials=2", "trainer.max_steps=2", "trainer.val_check_interval=2", *TINY_VAE_MODEL, *QUIET_CPU_TRAINING]
    sweep(monkeypatch, "train_ae", "hparams_search=vae_optuna", f"hydra.sweep.dir={tmp_path}", *trials)
    rows = summary(tmp_path)
    assert [row["status"] for row in rows] == ["COMPLETED", "COMPLETED"]
    for row in rows:
        assert row["overrides"].count("vae.optim.") == 3  # lr, warmup_steps, ema_rate: the searched settings name the folder
        assert float(row["objective"]) == pytest.approx(metrics(tmp_path / row["folder"])["val/bpd_given_label"])
    best = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    assert best["best_value"] == pytest.approx(min(float(row["objective"]) for row in rows))


def test_the_submitit_launcher_runs_each_job_in_its_own_process_and_folder(tmp_path):
    """For real: two tiny jobs through hydra/launcher=submitit_local, started from another folder."""
    args = ["-m", "hydra/launcher=submitit_local", f"hydra.sweep.dir={tmp_path}", "vae.optim.lr=1e-3,2e-3", "trainer.max_steps=2"]
    result = subprocess.run(
        [sys.executable, str(ROOT / "main" / "train_ae.py"), *args, *TINY_DIGITS], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = summary(tmp_path)
    assert [(row["folder"], row["status"]) for row in rows] == [
        ("0_vae.optim.lr=0.001", "COMPLETED"),
        ("1_vae.optim.lr=0.002", "COMPLETED"),
    ]
    for row in rows:
        assert (tmp_path / row["folder"] / "checkpoints" / "last.ckpt").is_file()
    assert len(list((tmp_path / ".submitit").glob("*/*_log.out"))) == 2  # two job processes


@pytest.mark.parametrize(
    ("number", "overrides", "name"),
    [
        (0, "", "0"),
        (3, "seed=1,vae.optim.lr=0.002", "3_seed=1,vae.optim.lr=0.002"),
        (1, "checkpoint=outputs/a/checkpoints/last.ckpt", "1_checkpoint=outputs_a_checkpoints_last.ckpt"),  # one folder, not nested
        (2, "x" * 300, "2_" + "x" * 118),  # within file-name limits
    ],
)
def test_job_folder_names(number, overrides, name):
    assert job_name(number, overrides) == name


def test_a_failed_job_is_a_row_of_the_summary_and_the_others_run(monkeypatch, tmp_path):
    import main.train_ae

    def fails_for_seed_1(cfg):
        if cfg.seed == 1:
            raise RuntimeError("out of memory\nmore lines")
        return train_stage_one(cfg)

    monkeypatch.setattr(main.train_ae, "train", fails_for_seed_1)
    with pytest.raises(SystemExit):  # Hydra's basic sweeper ends with the failed job's error, after the others ran
        sweep(monkeypatch, "train_ae", f"hydra.sweep.dir={tmp_path}", "seed=1,2", "trainer.max_steps=2", *TINY_DIGITS)
    rows = summary(tmp_path)
    assert [(row["folder"], row["status"], row["error"]) for row in rows] == [
        ("0_seed=1", "FAILED", "RuntimeError: out of memory"),
        ("1_seed=2", "COMPLETED", ""),
    ]
    assert rows[0]["objective"] == "" and float(rows[1]["objective"]) > 0


def test_a_job_of_a_sweep_continues_in_its_folder(monkeypatch, tmp_path):
    sweep(monkeypatch, "train_ae", f"hydra.sweep.dir={tmp_path}", "seed=0,1", "trainer.max_steps=2", *TINY_DIGITS)
    sweep(monkeypatch, "train_ae", f"hydra.sweep.dir={tmp_path}", "seed=0,1", "trainer.max_steps=4", "resume=true", *TINY_DIGITS)
    assert [metrics(tmp_path / folder)["global_step"] for folder in ("0_seed=0", "1_seed=1")] == [4, 4]
    assert len(summary(tmp_path)) == 2
