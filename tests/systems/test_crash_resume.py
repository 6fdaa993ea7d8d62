"""A training run killed with SIGKILL, twice, and resumed each time ends with the weights of a run never interrupted.

Bit for bit: weights, EMA, optimizer state, skip counters, step count and LR schedule. The kills land
mid-epoch (the classic trap: a resumed epoch must continue its order, not start it again) and the run
crosses an epoch boundary after the last resume.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import ROOT, TINY_DIGITS, tiny_train_config

from main.train_ae import train
from main.utils.checkpoint import load_checkpoint

MAX_STEPS = 48  # digits: 45 batches of 32 per epoch; a multiple of val_check_interval, so the last step is checkpointed
SETTINGS = [f"trainer.max_steps={MAX_STEPS}", "trainer.val_check_interval=6", "trainer.limit_val_batches=1", "trainer.deterministic=true"]


def checkpointed_step(last: Path) -> int:
    return load_checkpoint(last, "vae")["global_step"] if last.is_file() else -1


def kill_after_checkpoint(run: Path, step: int, *overrides: str) -> int:
    """Train through the command line and SIGKILL the process once its last.ckpt holds ``step`` updates or more;
    returns that checkpoint's step. (A process of its own, not a fork: a fork of a process whose OpenMP threads
    have run can deadlock.)"""
    log = run.with_suffix(".log")
    args = [sys.executable, "main/train_ae.py", *TINY_DIGITS, f"run_dir={run}", "name=test", *SETTINGS, *overrides]
    # The same thread count as the uninterrupted run in this process: float sums are ordered per thread count.
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    with log.open("w") as stderr:
        process = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr, env=env)
    last, deadline = run / "checkpoints" / "last.ckpt", time.monotonic() + 240
    try:
        while checkpointed_step(last) < step:
            assert process.poll() is None, f"training exited with {process.returncode}: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, "no checkpoint in time"
            time.sleep(0.05)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == -signal.SIGKILL
    return checkpointed_step(last)


@pytest.fixture
def restore_determinism():
    deterministic = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(deterministic)


def test_killed_and_resumed_twice_equals_uninterrupted(tmp_path, restore_determinism):
    reference = load_checkpoint(train(tiny_train_config(tmp_path / "straight", *SETTINGS)), "vae")

    run = tmp_path / "killed"
    first = kill_after_checkpoint(run, 6)
    second = kill_after_checkpoint(run, first + 24, "resume=true")
    assert 6 <= first < second < 45  # both kills mid-epoch, the second after progress made by a resumed run
    print(f"killed after the checkpoints of steps {first} and {second}")
    resumed = load_checkpoint(train(tiny_train_config(run, *SETTINGS, "resume=true")), "vae")

    assert resumed["global_step"] == reference["global_step"] == MAX_STEPS
    assert resumed["state_dict"].keys() == reference["state_dict"].keys()
    for name, tensor in reference["state_dict"].items():  # weights, EMA (ema.module.*, ema.n_averaged), skip counters
        assert torch.equal(tensor, resumed["state_dict"][name]), name
    torch.testing.assert_close(resumed["optimizer_states"], reference["optimizer_states"], rtol=0, atol=0)
    assert resumed["lr_schedulers"] == reference["lr_schedulers"]


def test_a_run_whose_metric_stopped_improving_still_checkpoints_every_validation(tmp_path, monkeypatch):
    """last.ckpt is written at every validation, also when val/bpd_given_label did not improve (Lightning's save_last writes it only
    with a new best); best.ckpt keeps the best. A run that dies after a plateau resumes from its last validation."""
    from main.systems.stage_one import StageOneSystem

    def flat_validation(self, batch, batch_idx):
        self.log("val/bpd_given_label", torch.tensor(1.0), on_epoch=True, batch_size=len(batch[0]))

    train_step = StageOneSystem.training_step

    def dies_before_update_8(self, batch, batch_idx):
        if self.global_step == 7:
            raise RuntimeError("killed")
        return train_step(self, batch, batch_idx)

    monkeypatch.setattr(StageOneSystem, "validation_step", flat_validation)
    monkeypatch.setattr(StageOneSystem, "training_step", dies_before_update_8)
    settings = ["trainer.max_steps=9", "trainer.val_check_interval=3", "trainer.num_sanity_val_steps=0"]
    with pytest.raises(RuntimeError, match="killed"):
        train(tiny_train_config(tmp_path, *settings))
    checkpoints = tmp_path / "checkpoints"
    assert checkpointed_step(checkpoints / "last.ckpt") == 6  # validations at 3 and 6, the second no better
    assert checkpointed_step(checkpoints / "best.ckpt") == 3
    monkeypatch.setattr(StageOneSystem, "training_step", train_step)
    resumed = load_checkpoint(train(tiny_train_config(tmp_path, *settings, "resume=true")), "vae")
    assert resumed["global_step"] == 9 and checkpointed_step(checkpoints / "best.ckpt") == 3
