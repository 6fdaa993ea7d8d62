"""Controllable synthesis: attribute directions, class swaps and variations, through stage one alone or both stages."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import ROOT, compose_config, tiny_refiner_config, tiny_train_config
from PIL import Image

from main.control import attribute_direction, load_stages, run
from main.datasets import first_images
from main.train_ae import train as train_stage_one
from main.train_ddpm import train
from main.utils.errors import UserError
from main.utils.image_io import to_uint8

CELL = 66  # a grid cell: 8 px images shown at 64 px, plus make_grid's 2 px padding


@pytest.fixture(scope="module")
def stage_one(tmp_path_factory):
    """A class-conditional tiny digits VAE (10 latent groups)."""
    return train_stage_one(tiny_train_config(tmp_path_factory.mktemp("vae"), "trainer.max_steps=30", "trainer.val_check_interval=30"))


@pytest.fixture(scope="module")
def refiner(tmp_path_factory, stage_one):
    return train(tiny_refiner_config(tmp_path_factory.mktemp("ddpm"), stage_one, "trainer.max_steps=4", "trainer.val_check_interval=4"))


def control(checkpoint, out_dir, *overrides):
    cfg = compose_config(
        "control",
        [
            f"checkpoint={checkpoint}",
            f"out_dir={out_dir}",
            "device=cpu",
            "num_workers=0",
            "n=3",
            "batch_size=2",
            "sampler.steps=2",
            *overrides,
        ],
    )
    return run(cfg)


def cells(png, rows: int, columns: int) -> np.ndarray:
    """The 8x8 images [rows, columns, H, W] of a written strip or grid (first channel; each shown 8x enlarged)."""
    image = np.asarray(Image.open(png))[..., 0]
    assert image.shape == (rows * CELL + 2, columns * CELL + 2)
    return np.stack(
        [[image[2 + r * CELL : 2 + r * CELL + 64 : 8, 2 + c * CELL : 2 + c * CELL + 64 : 8] for c in range(columns)] for r in range(rows)]
    )


def test_strength_zero_keeps_the_image_and_the_strips_show_every_strength(refiner, tmp_path):
    """lower=image: strength 0 decodes the image's own posterior means."""
    out = tmp_path / "attribute"
    results, stage_one, refined = control(refiner, out, "attribute.strengths=[0,2,0]", "attribute.lower=image", "attribute.n_images=60")
    vae, _, _, data = load_stages(refiner)
    x, labels = first_images(data, "test", 3)
    own = to_uint8(vae.sample(len(x), labels, latents=vae.encode_latents(x, labels, temperature=0.0), output="mean"))
    assert torch.equal(stage_one[:, 0], own) and torch.equal(stage_one[:, 2], own)
    assert not torch.equal(stage_one[:, 1], own)  # the direction moves the image
    assert torch.equal(refined[:, 0], refined[:, 2])  # the refiner starts every column from the same noise
    strips = sorted((out / "attribute").glob("*.png"))
    assert [p.name for p in strips] == ["000000.png", "000001.png", "000002.png"]
    for index, strip in enumerate(strips):
        written = cells(strip, rows=2, columns=3)
        assert np.array_equal(written[0], stage_one[index, :, 0].numpy()) and np.array_equal(written[1], refined[index, :, 0].numpy())
    metrics = json.loads((out / "results.json").read_text())["metrics"]
    assert metrics["attribute"] == "class 0" and metrics["n_with"] + metrics["n_without"] == 60 and metrics["columns"] == 3


def test_strength_zero_with_lower_groups_from_the_prior(stage_one, tmp_path):
    """lower=prior at temperature 0: strength 0 is the top k posterior means decoded with the prior's means below them."""
    _, images, refined = control(stage_one, tmp_path / "a", "k=3", "attribute.strengths=[-1,0,1]", "attribute.n_images=60")
    vae, _, _, data = load_stages(stage_one)
    x, labels = first_images(data, "test", 3)
    top = vae.encode_latents(x, labels, temperature=0.0)[:3]
    own = vae.sample(3, labels, temperature=0.0, output="mean", latents=[*top, *[None] * (vae.num_groups - 3)])
    assert refined is None and torch.equal(images[:, 1], to_uint8(own))
    assert cells(tmp_path / "a" / "attribute" / "000000.png", rows=1, columns=3).shape == (1, 3, 8, 8)  # stage one only: one row


def test_the_direction_is_the_mean_difference_of_posterior_latents(stage_one, tmp_path):
    """Class 3 against the rest, recomputed one image at a time with numpy."""
    vae, _, _, data = load_stages(stage_one)
    x, labels = first_images(data, "train", 40)
    latents = [[z[0].numpy().astype(np.float64) for z in vae.encode_latents(x[i : i + 1], labels[i : i + 1])[:2]] for i in range(40)]
    has = labels.numpy() == 3
    expected = [
        np.mean([z[g] for z, h in zip(latents, has) if h], 0) - np.mean([z[g] for z, h in zip(latents, has) if not h], 0) for g in (0, 1)
    ]
    batches = [(x[:16], labels[:16]), (x[16:], labels[16:])]
    direction, n_with, n_without = attribute_direction(vae, batches, lambda batch_labels, start: batch_labels == 3, 2, True)
    assert (n_with, n_without) == (int(has.sum()), int((~has).sum()))
    for got, want in zip(direction, expected):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-5)
    results, _, _ = control(stage_one, tmp_path / "run", "attribute.attribute=3", "attribute.n_images=40", "k=2")
    np.testing.assert_allclose(results["metrics"]["direction_norm_per_group"], [np.linalg.norm(d) for d in expected], rtol=1e-4)
    assert results["metrics"]["n_with"] == int(has.sum())

    # the same attribute from a file: a CSV column (by name) and an .npy column (by index)
    csv_file, npy_file = tmp_path / "attributes.csv", tmp_path / "attributes.npy"
    csv_file.write_text("image,is_three\n" + "".join(f"{i},{int(h)}\n" for i, h in enumerate(has)))
    np.save(npy_file, np.stack([~has, has], 1).astype(np.int8))
    for file, column in ((csv_file, "is_three"), (npy_file, 1)):
        from_file, _, _ = control(
            stage_one,
            tmp_path / f"run_{file.suffix[1:]}",
            f"attribute.attributes_file={file}",
            f"attribute.attribute={column}",
            "attribute.n_images=40",
            "k=2",
            "n=1",
            "attribute.strengths=[0]",
        )
        assert from_file["metrics"]["direction_norm_per_group"] == results["metrics"]["direction_norm_per_group"]


def test_class_swap_changes_the_image_with_the_label_and_keeps_it_under_its_own(refiner, tmp_path):
    out = tmp_path / "swap"
    results, stage_one, refined = control(refiner, out, "task=class_swap", "k=2")
    vae, _, _, data = load_stages(refiner)
    x, labels = first_images(data, "test", 3)
    top = vae.encode_latents(x, labels, temperature=0.0)[:2]
    own = to_uint8(vae.sample(3, labels, temperature=0.0, output="mean", latents=[*top, *[None] * (vae.num_groups - 2)]))
    for i, label in enumerate(labels.tolist()):
        assert torch.equal(stage_one[i, label], own[i])
        others = [c for c in range(10) if c != label]
        assert all(not torch.equal(stage_one[i, c], own[i]) for c in others)
    assert stage_one.shape[:2] == refined.shape[:2] == (3, 10)
    assert Image.open(out / "class_swap_grid.png").size == (10 * CELL + 2, 6 * CELL + 2)  # rows: each image's stage one and refined
    assert results["metrics"]["classes"] == list(range(10))


def test_variation_at_temperature_zero_is_deterministic(refiner, tmp_path):
    settings = ("task=variation", "variation.n=3", "n=2")
    _, stage_one, refined = control(refiner, tmp_path / "t0", *settings, "variation.temperature=0")
    _, again, refined_again = control(refiner, tmp_path / "t0_again", *settings, "variation.temperature=0")
    assert torch.equal(stage_one, again) and torch.equal(refined, refined_again)
    assert all(torch.equal(stage_one[:, c], stage_one[:, 0]) for c in (1, 2))
    results, varied, _ = control(refiner, tmp_path / "t1", *settings, "variation.temperature=1")
    assert not torch.equal(varied[:, 1], varied[:, 0]) and results["metrics"]["stage_one_spread"] > 0
    assert Image.open(tmp_path / "t1" / "variation_grid.png").size == (3 * CELL + 2, 4 * CELL + 2)


def test_samples_can_be_controlled_too(stage_one, tmp_path):
    results, images, _ = control(stage_one, tmp_path / "samples", "task=variation", "source=samples", "variation.n=2")
    assert images.shape == (3, 2, 1, 8, 8) and results["metrics"]["labels"] == [-1, -1, -1]


@pytest.fixture(scope="module")
def unconditional(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("unconditional")
    return train_stage_one(tiny_train_config(run_dir, "vae.model.num_classes=0", "trainer.max_steps=2", "trainer.val_check_interval=2"))


def test_class_swap_needs_a_class_conditional_model(unconditional, tmp_path):
    with pytest.raises(UserError, match="class_swap needs a class-conditional stage one"):
        control(unconditional, tmp_path / "swap", "task=class_swap")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["k=11"], r"k=11: use 'all', an integer 1\.\.10 \(stage one has 10 latent groups\)"),
        (["k=0"], r"k=0: use 'all', an integer 1\.\.10"),
        (["k=0px"], r"k='0px': use 'all', an integer 1\.\.10 .* '<R>px' for the groups up to R pixels \(resolutions \[1, 4, 8\]\)"),
        (["attribute.attributes_file=/nonexistent/attributes.csv"], "attributes_file '/nonexistent/attributes.csv' does not exist"),
        (["attribute.attribute=12"], r"attribute=12: without an attributes_file it is a class id, 0\.\.9"),
        (["task=morph"], r"unknown task 'morph'"),
        (["attribute.lower=posterior"], "attribute.lower='posterior': use prior or image"),
    ],
)
def test_bad_settings_are_clear_errors(stage_one, tmp_path, overrides, message):
    with pytest.raises(UserError, match=message):
        control(stage_one, tmp_path / "out", *overrides)


def test_existing_results_are_kept_unless_overwrite(stage_one, tmp_path):
    out = tmp_path / "out"
    control(stage_one, out, "task=variation", "variation.n=1")
    before = (out / "variation_grid.png").read_bytes()
    with pytest.raises(UserError, match="already holds results or other files: pass overwrite=true"):
        control(stage_one, out, "task=variation", "variation.n=2")
    assert (out / "variation_grid.png").read_bytes() == before
    control(stage_one, out, "task=variation", "variation.n=2", "overwrite=true")
    assert (out / "variation_grid.png").read_bytes() != before


def test_the_command_prints_one_line_errors(stage_one, tmp_path):
    command = [sys.executable, "main/control.py", f"checkpoint={stage_one}", f"out_dir={tmp_path}", "attribute.attributes_file=missing.csv"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: attributes_file 'missing.csv' does not exist: pass a CSV (header row) or .npy of 0/1 values, one row per image"
    ]
