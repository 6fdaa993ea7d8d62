"""Resuming: through the safe loader only, in place after the run folder moved or a SLURM requeue, with the settings it was trained with."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import ROOT, TINY_DIGITS, compose_config, crafted_checkpoint, tiny_refiner_config, tiny_train_config, user_error

from main.train_ae import train as train_stage_one
from main.train_ddpm import train as train_refiner
from main.utils.checkpoint import load_checkpoint

TWO_STEPS = ["trainer.max_steps=2", "trainer.val_check_interval=2"]


def test_resume_refuses_a_checkpoint_that_would_run_code_even_when_the_environment_allows_it(tmp_path):
    run, marker = tmp_path / "run", tmp_path / "ran"
    last = crafted_checkpoint(run / "checkpoints" / "last.ckpt", marker)
    env = os.environ | {"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1", "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "main/train_ae.py", *TINY_DIGITS, *TWO_STEPS, f"run_dir={run}", "name=test", "resume=true"]
    result = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert not marker.exists()
    assert result.returncode == 2 and len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert str(last) in errors[0] and "loading it could run code" in errors[0]


def best_state(checkpoint: dict) -> dict:
    """The state of the callback that keeps best.ckpt, as saved in ``checkpoint``."""
    return next(state for key, state in checkpoint["callbacks"].items() if "val/bpd_given_label" in key)


def test_a_moved_run_folder_resumes_in_place(tmp_path):
    """Lightning's checkpoint state remembers the folder's old path; resuming must still write last.ckpt and best.ckpt,
    not last-v1.ckpt beside a stale last.ckpt, and keep the best score."""
    first = tmp_path / "first"
    score = best_state(
        load_checkpoint(train_stage_one(tiny_train_config(first, "trainer.max_steps=4", "trainer.val_check_interval=2")), "vae")
    )
    moved = tmp_path / "renamed"
    shutil.move(first, moved)
    last = train_stage_one(tiny_train_config(moved, "trainer.max_steps=8", "trainer.val_check_interval=2", "resume=true"))
    assert last == moved / "checkpoints" / "last.ckpt"
    assert sorted(p.name for p in last.parent.iterdir()) == ["best.ckpt", "last.ckpt"]
    checkpoint = load_checkpoint(last, "vae")
    assert checkpoint["global_step"] == 8
    best = best_state(checkpoint)
    assert best["dirpath"] == str(last.parent) and list(best["best_k_models"]) == [str(last.parent / "best.ckpt")]
    assert best["best_model_score"] <= score["best_model_score"]


def test_a_copied_run_folder_resumes_in_the_copy_and_leaves_the_original(tmp_path):
    original = tmp_path / "original"
    train_stage_one(tiny_train_config(original, *TWO_STEPS))
    before = (original / "checkpoints" / "last.ckpt").read_bytes()
    copy = tmp_path / "copy"
    shutil.copytree(original, copy)
    last = train_stage_one(tiny_train_config(copy, "trainer.max_steps=4", "trainer.val_check_interval=2", "resume=true"))
    assert load_checkpoint(last, "vae")["global_step"] == 4
    assert sorted(p.name for p in last.parent.iterdir()) == ["best.ckpt", "last.ckpt"]
    assert (original / "checkpoints" / "last.ckpt").read_bytes() == before


def npz_digits(path):
    """8x8 grayscale images with digit labels: a data set the digits model fits, but not digits."""
    generator = np.random.default_rng(0)
    np.savez(path, images=generator.integers(0, 256, (200, 8, 8), dtype=np.uint8), labels=np.arange(200) % 10)
    return path


def test_resume_on_another_data_set_is_refused(tmp_path):
    run = tmp_path / "run"
    train_stage_one(tiny_train_config(run, *TWO_STEPS))
    npz = npz_digits(tmp_path / "other.npz")
    overrides = [o for o in TINY_DIGITS if not o.startswith("dataset=")]
    other_data = ["dataset=npz", f"dataset.root={npz}", "dataset.image_size=8", "dataset.channels=1", "dataset.num_classes=10"]
    cfg = compose_config("train_ae", [*overrides, *other_data, *TWO_STEPS, f"run_dir={run}", "name=test", "resume=true"])
    message = user_error(train_stage_one, cfg)
    assert "dataset.name='digits', this run has 'npz'" in message and "name=<new name>" in message


def test_resume_may_read_the_data_from_elsewhere(tmp_path):
    """Where the data lives is not what it is: dataset.root and friends may change."""
    run = tmp_path / "run"
    train_stage_one(tiny_train_config(run, *TWO_STEPS))
    last = train_stage_one(
        tiny_train_config(run, "trainer.max_steps=4", "trainer.val_check_interval=2", "resume=true", "dataset.root=/elsewhere")
    )
    assert load_checkpoint(last, "vae")["global_step"] == 4


def test_resume_with_another_architecture_is_one_line(tmp_path):
    run = tmp_path / "run"
    train_stage_one(tiny_train_config(run, *TWO_STEPS))
    message = user_error(train_stage_one, tiny_train_config(run, *TWO_STEPS, "resume=true", "vae.model.width=32"))
    assert "vae.model.width=16, this run has 32" in message


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two stage ones (other seeds) and a refiner of the first."""
    root = tmp_path_factory.mktemp("runs")
    one = train_stage_one(tiny_train_config(root / "one", *TWO_STEPS))
    other = train_stage_one(tiny_train_config(root / "other", *TWO_STEPS, "seed=1"))
    refiner_dir = root / "refiner"
    train_refiner(tiny_refiner_config(refiner_dir, one, *TWO_STEPS))
    return {"one": one, "other": other, "refiner_dir": refiner_dir, "root": root}


def resume_refiner(runs, stage_one, *overrides):
    return tiny_refiner_config(
        runs["refiner_dir"], stage_one, "trainer.max_steps=4", "trainer.val_check_interval=2", "resume=true", *overrides
    )


def test_refiner_resume_with_another_stage_one_is_refused(runs):
    """Lightning would restore the old stage one's weights from the checkpoint over the one given, and record the new path."""
    message = user_error(train_refiner, resume_refiner(runs, runs["other"]))
    assert f"stage_one={runs['other']} is not the stage_one it was trained with ('{runs['one']}')" in message


@pytest.mark.parametrize(
    ("override", "words"),
    [
        ("ddpm.diffusion.formulation=form2", "ddpm.diffusion.formulation='form1', this run has 'form2'"),
        ("ddpm.unet.model_channels=8", "ddpm.unet.model_channels=16, this run has 8"),
    ],
)
def test_refiner_resume_with_another_formulation_or_architecture_is_refused(runs, override, words):
    assert words in user_error(train_refiner, resume_refiner(runs, runs["one"], override))


def test_refiner_resumes_with_its_stage_one_moved(runs, tmp_path):
    """The same stage one (same weights) at another path is the same stage one."""
    moved = tmp_path / "moved.ckpt"
    shutil.copy(runs["one"], moved)
    refiner_copy = tmp_path / "refiner"
    shutil.copytree(runs["refiner_dir"], refiner_copy)
    runs = runs | {"refiner_dir": refiner_copy}
    checkpoint = load_checkpoint(train_refiner(resume_refiner(runs, moved)), "ddpm")
    assert checkpoint["global_step"] == 4 and checkpoint["hyper_parameters"]["stage_one"]["checkpoint"] == str(moved)
    stage_one = load_checkpoint(runs["one"], "vae")["state_dict"]
    for name, tensor in checkpoint["state_dict"].items():
        if name.startswith("stage_one."):
            assert torch.equal(tensor, stage_one[name.replace("stage_one.", "ema.module.", 1)]), name


@pytest.fixture
def slurm_time_limit(monkeypatch):
    """Stage one's training_step: at update ``at`` it runs Lightning's SIGUSR1 handler (the sbatch script's
    --signal=SIGUSR1@90: save run_dir/hpc_ckpt_<n>.ckpt, `scontrol requeue`), then dies as the job does at its time
    limit. Returns the step counter and the requeue commands; a test then restores the step with ``undo``."""
    from lightning.pytorch.trainer.connectors import signal_connector

    from main.systems.stage_one import StageOneSystem

    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    requeues, steps = [], []
    monkeypatch.setattr(signal_connector, "call", lambda command: requeues.append(command) or 0)
    train_step = StageOneSystem.training_step

    def arm(at: int | None):
        def step(self, batch, batch_idx):
            if self.global_step == at:
                self.trainer._signal_connector._slurm_sigusr_handler_fn(signal.SIGUSR1, None)
                raise RuntimeError("time limit")
            steps.append(self.global_step)
            return train_step(self, batch, batch_idx)

        monkeypatch.setattr(StageOneSystem, "training_step", step)

    return arm, steps, requeues


def test_a_requeued_slurm_job_resumes_from_the_checkpoint_saved_at_the_signal(tmp_path, slurm_time_limit, monkeypatch, caplog):
    """SLURM starts a requeued job with the same command (no resume=true): it goes on from hpc_ckpt_1.ckpt (update 3),
    newer than last.ckpt (update 2), through resume=true's checks. A job not requeued is refused as before."""
    arm, steps, requeues = slurm_time_limit
    settings = ["trainer.max_steps=5", "trainer.val_check_interval=2"]
    arm(3)
    with pytest.raises(RuntimeError, match="time limit"):
        train_stage_one(tiny_train_config(tmp_path, *settings))
    assert requeues == [["scontrol", "requeue", "4242"]] and (tmp_path / "hpc_ckpt_1.ckpt").is_file()
    assert load_checkpoint(tmp_path / "checkpoints" / "last.ckpt", "vae")["global_step"] == 2

    arm(None)
    assert "already holds checkpoints: pass resume=true" in user_error(train_stage_one, tiny_train_config(tmp_path, *settings))
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    wider = tiny_train_config(tmp_path, *settings, "vae.model.width=32")
    assert "vae.model.width=16, this run has 32" in user_error(train_stage_one, wider)
    steps.clear()
    caplog.clear()
    with caplog.at_level(logging.INFO):
        last = train_stage_one(tiny_train_config(tmp_path, *settings))
    assert steps == [3, 4] and load_checkpoint(last, "vae")["global_step"] == 5
    resumed = [record.getMessage() for record in caplog.records if record.getMessage().startswith("SLURM")]
    assert resumed == [f"SLURM requeued job 4242 (restart 1): resuming from '{tmp_path / 'hpc_ckpt_1.ckpt'}' as resume=true would"]


def test_a_new_job_over_a_run_with_only_an_hpc_checkpoint_is_refused(tmp_path, slurm_time_limit):
    """Under SLURM Lightning would resume it by itself, unchecked; and resume=true finds it."""
    arm, steps, _ = slurm_time_limit
    settings = ["trainer.max_steps=3", "trainer.val_check_interval=4"]
    arm(1)
    with pytest.raises(RuntimeError, match="time limit"):
        train_stage_one(tiny_train_config(tmp_path, *settings))
    assert not (tmp_path / "checkpoints").exists() and (tmp_path / "hpc_ckpt_1.ckpt").is_file()
    arm(None)
    assert "already holds checkpoints: pass resume=true" in user_error(train_stage_one, tiny_train_config(tmp_path, *settings))
    steps.clear()
    assert load_checkpoint(train_stage_one(tiny_train_config(tmp_path, *settings, "resume=true")), "vae")["global_step"] == 3
    assert steps == [1, 2]


def test_a_class_conditional_run_saved_with_the_old_val_bpd_name_resumes_with_its_best_score(tmp_path):
    """Its best.ckpt state was kept under monitor val/bpd, now val/bpd_given_label: resuming keeps the best score (here
    one no validation beats), so best.ckpt is not written over, and last.ckpt carries the state under the new name."""
    train_stage_one(tiny_train_config(tmp_path, *TWO_STEPS))
    last = tmp_path / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    [key] = [key for key in checkpoint["callbacks"] if "'val/bpd_given_label'" in key]
    old = checkpoint["callbacks"].pop(key)
    unbeaten = torch.tensor(0.01)
    old |= {"monitor": "val/bpd", "best_model_score": unbeaten, "kth_value": unbeaten, "best_k_models": {old["best_model_path"]: unbeaten}}
    checkpoint["callbacks"][key.replace("'val/bpd_given_label'", "'val/bpd'")] = old
    torch.save(checkpoint, last)
    best = (tmp_path / "checkpoints" / "best.ckpt").read_bytes()

    resumed = load_checkpoint(
        train_stage_one(tiny_train_config(tmp_path, "trainer.max_steps=4", "trainer.val_check_interval=2", "resume=true")), "vae"
    )
    assert resumed["global_step"] == 4 and (tmp_path / "checkpoints" / "best.ckpt").read_bytes() == best
    assert not [key for key in resumed["callbacks"] if "'val/bpd'" in key]
    assert best_state(resumed)["monitor"] == "val/bpd_given_label" and best_state(resumed)["best_model_score"] == unbeaten
