"""Training our KL autoencoder: reconstructions improve, and its checkpoint is its own stage."""

from __future__ import annotations

import csv

import pytest
from helpers import QUIET_CPU_TRAINING, compose_config

from main.systems.autoencoder import load_autoencoder
from main.systems.stage_one import load_stage_one
from main.train_autoencoder import train
from main.utils.errors import UserError


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("autoencoder")
    overrides = ["dataset=digits", "autoencoder=kl_f2", *QUIET_CPU_TRAINING, f"run_dir={run_dir}", "name=t"]
    cfg = compose_config("train_autoencoder", [*overrides, "trainer.max_steps=150", "trainer.val_check_interval=45"])
    return train(cfg), run_dir


def test_validation_psnr_rises_as_it_trains(trained):
    _, run_dir = trained
    rows = list(csv.DictReader(open(next(run_dir.glob("logs/*/metrics.csv")))))
    psnr = [float(r["val/psnr"]) for r in rows if r.get("val/psnr")]
    assert len(psnr) >= 3 and psnr[-1] > psnr[0] + 3  # dB


def test_checkpoint_rebuilds_the_autoencoder_and_is_refused_as_stage_one(trained):
    checkpoint, _ = trained
    system, ckpt = load_autoencoder(checkpoint)
    assert ckpt["stage"] == "autoencoder" and system.autoencoder.downsample_factor == 2
    with pytest.raises(UserError, match="autoencoder"):
        load_stage_one(checkpoint)
