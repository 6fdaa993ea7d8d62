"""The Python API (main.load): docs/python_api.md's example on tiny trained models, equality with the commands, errors."""

from __future__ import annotations

import math
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import ROOT, compose_config, tiny_refiner_config, tiny_train_config, user_error

from main import load
from main.api import Refiner, StageOne
from main.train_ae import train as train_stage_one
from main.train_ddpm import train

DOCS = ROOT / "docs" / "python_api.md"
STAGE_ONE_PATH, REFINER_PATH = "outputs/digits-digits/checkpoints/last.ckpt", "outputs/digits-ddpm-digits/checkpoints/last.ckpt"


@pytest.fixture(scope="module")
def stage_one(tmp_path_factory):
    return train_stage_one(tiny_train_config(tmp_path_factory.mktemp("vae"), "trainer.max_steps=10", "trainer.val_check_interval=10"))


@pytest.fixture(scope="module")
def refiner(tmp_path_factory, stage_one):
    run_dir = tmp_path_factory.mktemp("ddpm")
    return train(tiny_refiner_config(run_dir, stage_one, "trainer.max_steps=10", "trainer.val_check_interval=10"))


@pytest.fixture(scope="module")
def example(tmp_path_factory, stage_one, refiner):
    """The namespace left by docs/python_api.md's example, run on the tiny checkpoints in a fresh folder."""
    code = re.search(r"```python\n(.*?)```", DOCS.read_text(), re.DOTALL)[1]
    assert STAGE_ONE_PATH in code and REFINER_PATH in code
    code = code.replace(STAGE_ONE_PATH, str(stage_one)).replace(REFINER_PATH, str(refiner))
    folder = tmp_path_factory.mktemp("notebook")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        namespace: dict = {}
        exec(compile(code, str(DOCS), "exec"), namespace)
    namespace["folder"] = folder
    return namespace


def test_the_documented_stage_one_example_samples_and_scores(example):
    model, images = example["model"], example["images"]
    assert isinstance(model, StageOne) and model.device.type == "cpu"
    for name, n in [("images", 16), ("smooth", 16), ("sevens", 8)]:
        assert example[name].shape == (n, 1, 8, 8) and example[name].dtype == torch.uint8, name
    assert not torch.equal(images, model.sample(16, seed=1))  # another seed, other images
    assert not torch.equal(images, example["smooth"])
    for name in ("bpd", "test_bpd"):
        assert isinstance(example[name], float) and math.isfinite(example[name]) and 0 < example[name] < 16, name


def test_the_documented_refiner_example_samples_two_stages(example):
    refiner = example["refiner"]
    assert isinstance(refiner, Refiner)
    for name, n in [("refined", 16), ("fast", 16), ("stage_one", 16), ("refined_too", 16), ("per_class", 10)]:
        assert example[name].shape == (n, 1, 8, 8) and example[name].dtype == torch.uint8, name
    assert torch.equal(example["refined"], refiner.sample(16, seed=0))
    assert not torch.equal(example["refined"], refiner.sample(16, seed=1))
    assert not torch.equal(example["stage_one"], example["refined_too"])  # the refiner changed stage one's images
    assert (example["folder"] / "stage_one_above_refined.png").stat().st_size > 0


def test_stage_one_samples_are_test_aes_samples(stage_one, tmp_path):
    from main.evaluation.stage_one import evaluate

    out = tmp_path / "eval"
    overrides = ["tasks=[samples]", "samples.n=10", "samples.temperature=0.9", "seed=3", "batch_size=4", "device=cpu"]
    evaluate(compose_config("test_ae", [f"checkpoint={stage_one}", f"out_dir={out}", *overrides]))
    images = load(stage_one, "cpu").sample(10, seed=3, temperature=0.9, batch_size=4)
    assert np.array_equal(images.permute(0, 2, 3, 1).numpy(), np.load(out / "samples.npz")["images"])


def test_refiner_samples_are_test_ddpms_samples(refiner, tmp_path):
    from main.evaluation.stage_two import evaluate

    out = tmp_path / "eval"
    overrides = ["samples.n=6", "seed=2", "batch_size=4", "sampler=dpm_solver", "sampler.steps=4", "accelerator=cpu"]
    evaluate(compose_config("test_ddpm", [f"checkpoint={refiner}", f"out_dir={out}", *overrides]))
    y, x = load(refiner, "cpu").sample(6, seed=2, batch_size=4, sampler="dpm_solver", steps=4, with_stage_one=True)
    for images, name in [(x, "samples"), (y, "samples_stage_one")]:
        assert np.array_equal(images.permute(0, 2, 3, 1).numpy(), np.load(out / f"{name}.npz")["images"]), name


def test_bpd_of_a_loader_is_test_aes_bpd(stage_one, example, tmp_path):
    from main.evaluation.stage_one import evaluate

    out = tmp_path / "eval"
    metrics = evaluate(compose_config("test_ae", [f"checkpoint={stage_one}", f"out_dir={out}", "tasks=[bpd]", "device=cpu"]))["metrics"]
    # The same images with their labels (the model is class-conditional); other posterior draws.
    assert example["test_bpd"] == pytest.approx(metrics["test_bpd_given_label"], abs=0.02)


def test_bpd_is_seeded_and_leaves_the_callers_random_stream_alone(example):
    model, images = example["model"], example["images"]
    torch.manual_seed(0)
    expected = torch.rand(1)
    torch.manual_seed(0)
    assert model.bpd(images, seed=5) == model.bpd(images, seed=5)
    assert torch.equal(torch.rand(1), expected)


def test_a_refiner_has_no_bpd_and_says_which_checkpoint_has(example, stage_one):
    message = user_error(example["refiner"].bpd, example["images"])
    assert message.startswith("a refiner has no bits/dim") and f"load('{stage_one}')" in message


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda m, r: m.bpd(m.sample(2).float() / 127.5 - 1), "bpd scores uint8 images (0..255), not torch.float32"),
        (lambda m, r: m.bpd(m.sample(2).numpy()), "bpd takes uint8 images [N, C, H, W] or a DataLoader"),
        (lambda m, r: m.sample(0), "n=0: use a positive whole number"),
        (lambda m, r: m.sample(2, labels=10), r"labels: give one class id or 2 of them (one per image), each in 0..9 or -1"),
        (lambda m, r: m.sample(2, labels=[1, 2, 3]), "labels: give one class id or 2 of them"),
        (lambda m, r: m.sample(2, labels=["cat", "dog"]), "labels: give one class id or 2 of them"),
        (lambda m, r: r.sample(2, sampler="euler"), "unknown sampler 'euler': use one of ddim, ddpm, dpm_solver"),
        (lambda m, r: r.sample(2, eta=0.5, sampler="ddpm"), "eta: not a setting of sampler 'ddpm', which takes steps, spacing"),
        (lambda m, r: r.sample(2, name="ddpm"), "name: not a setting of sampler 'ddim'"),
    ],
)
def test_bad_arguments_are_one_line(example, call, message):
    assert message in user_error(call, example["model"], example["refiner"])


def test_a_checkpoint_of_another_stage_is_refused(stage_one, tmp_path):
    other = torch.load(stage_one, weights_only=True)
    other["stage"] = "autoencoder"
    torch.save(other, tmp_path / "autoencoder.ckpt")
    message = user_error(load, tmp_path / "autoencoder.ckpt")
    assert "is of stage 'autoencoder', but this command needs a 'vae' or 'ddpm' checkpoint" in message


def test_import_main_stays_cheap():
    code = "import sys, main; assert callable(main.load); print(sorted(m for m in ('torch', 'lightning', 'hydra') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
