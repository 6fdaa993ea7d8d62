"""Stage one in latent space end to end on digits: our autoencoder, the latent VAE on cached latents, evaluation
and sampling through test_ae, and a refiner on top; all from checkpoints alone."""

from __future__ import annotations

import csv
import math

import pytest
import torch
from helpers import QUIET_CPU_TRAINING, TINY_DIGITS, compose_config, tiny_refiner_config

from main.evaluation.stage_one import evaluate
from main.models.autoencoder import KLAutoencoder, autoencoder_spec
from main.models.latent_space import LatentSpaceModel
from main.systems.stage_one import StageOneSystem, load_stage_one
from main.systems.stage_two import load_stage_two
from main.train_ae import train as train_stage_one
from main.train_autoencoder import train as train_autoencoder
from main.train_ddpm import train as train_refiner
from main.utils.config import plain
from main.utils.errors import UserError

LATENT_DIGITS = [o for o in TINY_DIGITS if o != "vae=digits"] + ["vae=digits_latent"]


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    root = tmp_path_factory.mktemp("latent")
    ae_cfg = compose_config(
        "train_autoencoder",
        ["dataset=digits", "autoencoder=kl_f2", *QUIET_CPU_TRAINING, f"run_dir={root}/ae", "name=t", "trainer.max_steps=90"],
    )
    autoencoder = train_autoencoder(ae_cfg)
    cfg = compose_config(
        "train_ae",
        [*LATENT_DIGITS, f"run_dir={root}/vae", "name=t", f"vae.autoencoder={autoencoder}", f"vae.latent_cache={root}/cache",
         "trainer.max_steps=120", "trainer.val_check_interval=40"],
    )  # fmt: skip
    return {"root": root, "autoencoder": autoencoder, "stage_one": train_stage_one(cfg)}


def test_with_autoencoder_carries_the_frozen_autoencoders_weights():
    autoencoder = KLAutoencoder(image_channels=1, latent_channels=4, base_channels=8, channel_mults=[1, 2])
    with torch.no_grad():
        for p in autoencoder.parameters():
            p.add_(1.0)  # weights no fresh initialisation has
    cfg = compose_config("train_ae", [*LATENT_DIGITS, "run_dir=/tmp/unused", "name=t"])
    model = {**plain(cfg.vae.model), "image_size": 4, "channels": 4, "likelihood": "gaussian"}
    system = StageOneSystem.with_autoencoder(autoencoder, model=model, optim=plain(cfg.vae.optim), data=plain(cfg.dataset))
    assert system.hparams.autoencoder == autoencoder_spec(autoencoder)
    copied = system.state_dict()
    assert all(torch.equal(copied[f"autoencoder.{name}"], t) for name, t in autoencoder.state_dict().items())
    assert not system.train().autoencoder.training and not any(p.requires_grad for p in system.autoencoder.parameters())


def test_latent_vae_trains_on_cached_latents_and_its_loss_falls(stages):
    rows = list(csv.DictReader(open(next((stages["root"] / "vae").glob("logs/*/metrics.csv")))))
    val = [float(r["val/loss"]) for r in rows if r.get("val/loss")]
    assert len(val) >= 3 and val[-1] < val[0]
    cache = next((stages["root"] / "cache").iterdir())
    assert sorted(p.name for p in cache.glob("*_latents.npy")) == ["test_latents.npy", "train_latents.npy", "val_latents.npy"]


def test_checkpoint_carries_the_autoencoder_and_the_measured_normalisation(stages):
    system, checkpoint = load_stage_one(stages["stage_one"])
    hp = checkpoint["hyper_parameters"]
    assert hp["autoencoder"]["kind"] == "kl" and hp["model"]["likelihood"] == "gaussian"
    assert (hp["model"]["image_size"], hp["model"]["channels"]) == (4, 4)  # 8x8 digits -> 4x4x4 latents
    assert hp["model"]["pixel_std"] > 0 and hp["model"]["pixel_mean"] != 127.5  # measured on the cache, not the defaults
    model = system.image_model.eval()
    assert isinstance(model, LatentSpaceModel)
    images = model.sample(3, labels=torch.tensor([0, 1, 2]), generator=torch.Generator().manual_seed(0))
    assert images.shape == (3, 1, 8, 8) and images.abs().max() <= 1


def test_test_ae_evaluates_and_samples_a_latent_checkpoint(stages, tmp_path):
    cfg = compose_config(
        "test_ae",
        [f"checkpoint={stages['stage_one']}", f"out_dir={tmp_path}/eval", "num_workers=0", "device=cpu", "batch_size=64",
         "tasks=[bpd,iw_bpd,samples,class_samples,reconstructions]", "samples.n=8", "class_samples.n_per_class=1",
         "class_samples.guidance=[1.5,3.0]", "iw_bpd.samples=4", "iw_bpd.n_images=16", "reconstructions.n=4", "reconstructions.k=[0,all]"],
    )  # fmt: skip
    metrics = evaluate(cfg)["metrics"]
    # A density per latent dimension, named so; class-conditional: with the labels and with the null label.
    assert {"test_latent_bpd", "test_latent_bpd_given_label"} <= set(metrics) and "test_bpd" not in metrics
    assert metrics["test_latent_iw_bpd_given_label"] < metrics["test_latent_elbo_bpd_given_label"]
    # Reconstructions from every posterior group are closer to the images than prior samples (k = 0).
    groups = load_stage_one(stages["stage_one"])[0].vae.num_groups
    assert metrics[f"recon_mse_k{groups}"] < metrics["recon_mse_k0"]
    assert len(list((tmp_path / "eval" / "class_samples").glob("*.png"))) == 10


def test_the_python_api_samples_and_scores_a_latent_stage_one(stages):
    from main import load
    from main.datasets import first_images

    model = load(stages["stage_one"], "cpu")
    images = model.sample(5, seed=0, labels=3, batch_size=2)
    assert images.shape == (5, 1, 8, 8) and images.dtype == torch.uint8
    assert torch.equal(images, model.sample(5, seed=0, labels=3, batch_size=2))
    x, labels = first_images(model.data, "test", 6)
    bpd = model.bpd(x, labels)  # per latent dimension
    assert math.isfinite(bpd) and bpd == model.bpd(x, labels) and bpd != model.bpd(x, labels, seed=1)


def test_a_refiner_trains_on_a_latent_stage_one_and_samples_from_its_checkpoint(stages):
    refiner = train_refiner(tiny_refiner_config(stages["root"] / "ddpm", stages["stage_one"], "trainer.max_steps=3"))
    system, _ = load_stage_two(refiner)
    assert isinstance(system.stage_one, LatentSpaceModel)
    y, x = system.eval().generate(2, {"name": "ddim", "steps": 2}, labels=torch.tensor([3, 4]), generator=torch.Generator().manual_seed(0))
    assert y.shape == x.shape == (2, 1, 8, 8)


def test_latent_space_without_an_autoencoder_is_a_clear_error(tmp_path):
    cfg = compose_config("train_ae", [*LATENT_DIGITS, f"run_dir={tmp_path}", "name=t", "vae.autoencoder=null"])
    with pytest.raises(UserError, match="needs vae.autoencoder"):
        train_stage_one(cfg)
    cfg = compose_config("train_ae", [*LATENT_DIGITS, f"run_dir={tmp_path}", "name=t", f"vae.autoencoder={tmp_path}/none.ckpt"])
    with pytest.raises(UserError, match="train_autoencoder.py"):
        train_stage_one(cfg)


def test_control_edits_a_latent_stage_one(stages, tmp_path):
    """Attribute directions work on a latent stage one: strength 0 is the image's own decode, other strengths differ."""
    from main.control import run

    cfg = compose_config(
        "control",
        [f"checkpoint={stages['stage_one']}", f"out_dir={tmp_path}", "task=attribute", "n=2", "k=all", "device=cpu", "num_workers=0",
         "attribute.n_images=100", "attribute.strengths=[0,3]", "attribute.lower=image"],
    )  # fmt: skip
    results, stage_one, _ = run(cfg)
    assert stage_one.shape[-2:] == (8, 8) and results["metrics"]["stage_one_spread"] > 0
