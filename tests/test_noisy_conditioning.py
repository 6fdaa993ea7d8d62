"""Refining corrupted stage-one images end to end, SSIM's formula, and the training-only corruption augmentation of y."""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers import compose_config, tiny_refiner_config, tiny_train_config
from PIL import Image

from main.datasets import first_images
from main.evaluation.common import batch_generator
from main.noisy_conditioning import evaluate, psnr, ssim
from main.systems.stage_two import load_stage_two
from main.train_ae import train as train_stage_one
from main.train_ddpm import build_system, train
from main.utils.errors import UserError
from main.utils.image_io import to_uint8

MIXED = "ddpm.conditioning.corruption={kind:mixed,max_strength:{gaussian_noise:0.2,blur:1.0,jpeg:60},p:0.5}"


@pytest.fixture(scope="module")
def stage_one(tmp_path_factory):
    """Trained fast enough that y resembles x: a barely trained stage one outputs saturated pixels on the wrong side,
    which noise (clamped to [-1, 1]) moves towards x, so its PSNR need not fall with the noise."""
    overrides = ["trainer.max_steps=40", "trainer.val_check_interval=40", "vae.optim.lr=1e-2", "vae.optim.ema_rate=0.5"]
    return train_stage_one(tiny_train_config(tmp_path_factory.mktemp("vae"), *overrides))


@pytest.fixture(scope="module")
def refiner(tmp_path_factory, stage_one):
    """A refiner trained with every corruption kind as augmentation: training with it runs."""
    run_dir = tmp_path_factory.mktemp("ddpm")
    return train(tiny_refiner_config(run_dir, stage_one, MIXED, "trainer.max_steps=8", "trainer.val_check_interval=8"))


def eval_config(checkpoint, out_dir, *overrides):
    return compose_config(
        "noisy_conditioning",
        [
            f"checkpoint={checkpoint}",
            f"out_dir={out_dir}",
            "n=6",
            "batch_size=4",
            "examples=2",
            "sampler.steps=3",
            "device=cpu",
            "corruptions.gaussian_noise=[0,0.25,1.0]",
            "corruptions.blur=[0,1.5]",
            "corruptions.jpeg=[0,90]",
            *overrides,
        ],
    )


def test_every_point_is_scored_and_plotted(refiner, tmp_path):
    out = tmp_path / "noisy"
    evaluate(eval_config(refiner, out))
    results = json.loads((out / "results.json").read_text())
    table = results["metrics"]["noisy_conditioning"]
    points = [(row["corruption"], row["strength"]) for row in table]
    expected = [("gaussian_noise", 0.0), ("gaussian_noise", 0.25), ("gaussian_noise", 1.0), ("blur", 0.0), ("blur", 1.5), ("jpeg", 0.0)]
    assert points == [*expected, ("jpeg", 90.0)]
    for row in table:
        assert all(math.isfinite(row[key]) for key in ("psnr_y", "ssim_y", "psnr_refined", "ssim_refined"))
        assert -1 <= row["ssim_y"] <= 1 and -1 <= row["ssim_refined"] <= 1
    noise = [row["psnr_y"] for row in table if row["corruption"] == "gaussian_noise"]
    assert noise[0] > noise[1] > noise[2]
    assert [row["psnr_y"] for row in table if row["strength"] == 0] == [noise[0]] * 3  # the same clean y for every kind
    assert table[-1]["jpeg_quality"] == 10
    plot = Image.open(out / "noisy_conditioning.png")
    assert plot.size[0] > 600 and plot.size[1] > 300
    for kind in ("gaussian_noise", "blur", "jpeg"):
        assert (out / f"noisy_conditioning_{kind}.png").stat().st_size > 0


def test_clean_scores_match_an_independent_recomputation(refiner, tmp_path):
    """psnr_y at strength 0 is stage one's k = all reconstruction scored against the test images, batch by batch."""
    results = evaluate(
        eval_config(refiner, tmp_path / "noisy", "corruptions.gaussian_noise=[0]", "corruptions.blur=[]", "corruptions.jpeg=[]")
    )
    system, _ = load_stage_two(refiner)
    x, labels = first_images(system.hparams.data, "test", 6)
    scores = []
    for start in (0, 4):
        batch = slice(start, start + 4)
        y = system.eval().condition(x[batch], labels[batch], batch_generator(0, start, "cpu"), k="all")
        scores.append(psnr(to_uint8(y), x[batch]))
    expected = float(torch.cat(scores).mean())
    assert len(results["metrics"]["noisy_conditioning"]) == 1
    assert results["metrics"]["noisy_conditioning"][0]["psnr_y"] == pytest.approx(expected, rel=1e-6)


def test_ssim_of_an_image_with_itself_is_one_and_of_flat_images_follows_the_formula():
    x = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(ssim(x, x), torch.ones(2))
    # Flat images have no variance, so SSIM is the luminance term alone: (2 m1 m2 + C1) / (m1^2 + m2^2 + C1), C1 = (0.01 L)^2
    a, b = torch.full((1, 1, 16, 16), 100, dtype=torch.uint8), torch.full((1, 1, 16, 16), 150, dtype=torch.uint8)
    m1, m2, c1 = 100 / 255, 150 / 255, 0.01**2
    torch.testing.assert_close(ssim(a, b), torch.tensor([(2 * m1 * m2 + c1) / (m1**2 + m2**2 + c1)]))
    noisy = (x.float() + 40 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 255).to(torch.uint8)
    assert float(ssim(noisy, x).max()) < 0.9


def test_y_is_corrupted_in_training_only(refiner, monkeypatch):
    """The augmentation changes y in training steps; validation losses and sampling see the clean y."""
    import main.systems.stage_two as stage_two

    system, _ = load_stage_two(refiner)
    system.hparams.conditioning["corruption"] = {"kind": "gaussian_noise", "max_strength": 0.5, "p": 1.0}
    seen, calls = [], []
    monkeypatch.setattr(system.diffusion, "training_loss", lambda denoiser, x, y, generator=None: seen.append(y) or torch.zeros(len(x)))
    original = stage_two.random_corruption
    monkeypatch.setattr(stage_two, "random_corruption", lambda *args: calls.append(1) or original(*args))
    x, labels = first_images(system.hparams.data, "test", 8)
    clean = system.condition(x, labels, torch.Generator().manual_seed(0))
    system.train().loss(system.unet, x, labels, generator=torch.Generator().manual_seed(0))
    system.eval().loss(system.ema.module, x, labels, generator=torch.Generator().manual_seed(0))
    assert len(calls) == 1
    assert not torch.equal(seen[0], clean) and torch.equal(seen[1], clean)
    assert float((seen[0] - clean).abs().max()) > 0.1
    system.generate(2, {"name": "ddim", "steps": 2}, generator=torch.Generator().manual_seed(0))
    system.refine(clean, {"name": "ddim", "steps": 2})
    assert len(calls) == 1


def test_a_bad_augmentation_fails_before_training(stage_one, tmp_path):
    cfg = tiny_refiner_config(tmp_path, stage_one, "ddpm.conditioning.corruption={kind:sharpen,max_strength:1}")
    with pytest.raises(UserError, match="unknown corruption 'sharpen'"):
        build_system(cfg)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["corruptions.blur=[-1]"], r"blur strength -1.0: use 0\.\.100"),
        (["+corruptions.sharpen=[1]"], "unknown corruption 'sharpen'"),
        (["corruptions.gaussian_noise=[]", "corruptions.blur=[]", "corruptions.jpeg=[]"], "corruptions is empty"),
        (["n=100000"], "100000 images asked from the test split"),
    ],
)
def test_bad_settings_are_clear_errors(refiner, tmp_path, overrides, message):
    with pytest.raises(UserError, match=message):
        evaluate(eval_config(refiner, tmp_path / "noisy", *overrides))


def test_a_stage_one_checkpoint_is_refused(stage_one, tmp_path):
    with pytest.raises(UserError, match="needs a 'ddpm' checkpoint"):
        evaluate(eval_config(stage_one, tmp_path / "noisy"))
