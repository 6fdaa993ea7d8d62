"""Two-stage sampling, reconstructions and interpolation from a refiner checkpoint alone; sharding across ranks."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch
from helpers import ROOT, compose_config, random_inception_weights, tiny_refiner_config, tiny_train_config
from omegaconf import OmegaConf
from PIL import Image

from main.datasets import build_datamodule
from main.evaluation.common import Shard
from main.evaluation.stage_two import evaluate, slerp
from main.train_ae import train as train_stage_one
from main.train_ddpm import train
from main.utils.errors import UserError


@pytest.fixture(scope="module")
def refiner(tmp_path_factory):
    stage_one = train_stage_one(tiny_train_config(tmp_path_factory.mktemp("vae"), "trainer.max_steps=10", "trainer.val_check_interval=10"))
    return train(tiny_refiner_config(tmp_path_factory.mktemp("ddpm"), stage_one, "trainer.max_steps=10", "trainer.val_check_interval=10"))


def eval_config(checkpoint, out_dir, *overrides):
    return compose_config(
        "test_ddpm",
        [
            f"checkpoint={checkpoint}",
            f"out_dir={out_dir}",
            "num_workers=0",
            "batch_size=4",
            "sampler.steps=4",
            "accelerator=cpu",
            *overrides,
        ],
    )


def pngs(folder) -> list[np.ndarray]:
    return [np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))]


def test_every_task_writes_images_grids_npz_and_results(refiner, tmp_path):
    out = tmp_path / "eval"
    tasks = "tasks=[samples,class_samples,reconstructions,interpolation]"
    results = evaluate(
        eval_config(
            refiner,
            out,
            tasks,
            "samples.n=10",
            "class_samples.n_per_class=1",
            "reconstructions.n=5",
            "interpolation.pairs=2",
            "interpolation.points=3",
        )
    )
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["metrics"]["global_step"] == results["metrics"]["global_step"] == 10
    assert set(on_disk) == {"task", "checkpoint", "metrics", "timings", "config", "versions"}
    assert len(pngs(out / "samples")) == len(pngs(out / "samples_stage_one")) == 10 and pngs(out / "samples")[0].shape == (8, 8)
    assert np.load(out / "samples.npz")["images"].shape == (10, 8, 8, 1)
    assert list(np.load(out / "class_samples.npz")["labels"]) == list(range(10))
    timings = on_disk["timings"]
    assert timings["samples_images_per_s"] > 0 and timings["samples_stage_one_images_per_s"] > timings["samples_refiner_images_per_s"] > 0
    assert sorted(p.name for p in (out / "interpolation").iterdir()) == [
        "latents_000.png",
        "latents_001.png",
        "noise_000.png",
        "noise_001.png",
    ]
    for grid in ["samples_grid.png", "class_samples_grid.png", "reconstructions_grid.png"]:
        assert (out / grid).stat().st_size > 0
    assert not list(tmp_path.glob("**/.*.partial"))


def test_speed_quality_scores_every_sampler_and_step_count(refiner, tmp_path):
    """Offline (Inception with random weights), 2 samples per point against 4 test images (Inception costs ~0.3 s per image)."""
    weights = random_inception_weights(tmp_path / "inception-random.pth")
    reference = tmp_path / "reference.npz"
    test = build_datamodule(OmegaConf.load(ROOT / "main" / "configs" / "dataset" / "digits.yaml"), batch_size=1).split("test")
    np.savez(reference, images=np.stack([test[i][0].permute(1, 2, 0).numpy() for i in range(4)]))
    out = tmp_path / "eval"
    sq = ["speed_quality.steps=[2,4]", "speed_quality.n=2", f"speed_quality.reference={reference}"]
    offline = [f"speed_quality.weights={weights}", f"speed_quality.cache={tmp_path / 'cache'}"]
    results = evaluate(eval_config(refiner, out, "tasks=[samples,speed_quality]", "samples.n=2", *sq, *offline))
    points = json.loads((out / "results.json").read_text())["metrics"]["speed_quality"]
    assert points == results["metrics"]["speed_quality"]
    assert [(p["sampler"], p["steps"]) for p in points] == [(s, k) for s in ("ddpm", "ddim", "dpm_solver") for k in (2, 4)]
    for p in points:
        assert all(np.isfinite(p[key]) for key in ("images_per_s", "refiner_images_per_s", "fid", "kid_mean"))
        assert p["images_per_s"] > 0 and p["fid"] >= 0 and p["kid_subset_size"] == 2
    assert len({p["fid"] for p in points if p["steps"] == 4}) == 3  # each sampler's own images were scored
    with Image.open(out / "plots" / "speed_quality.png") as plot:
        assert plot.format == "PNG" and plot.size == (800, 500)
    # DDIM at 4 steps (this config's sampler) from the same seeds as the samples task: the same images
    assert np.array_equal(np.load(out / "speed_quality" / "ddim_4.npz")["images"], np.load(out / "samples.npz")["images"])


def test_reconstruction_scores_match_the_written_images(refiner, tmp_path):
    out = tmp_path / "eval"
    metrics = evaluate(eval_config(refiner, out, "tasks=[reconstructions]", "reconstructions.n=4"))["metrics"]
    original = np.stack(pngs(out / "reconstructions" / "original")).astype(np.float64) / 255
    for stage in ("stage_one", "refined"):
        images = np.stack(pngs(out / "reconstructions" / stage)).astype(np.float64) / 255
        mse = ((images - original) ** 2).reshape(4, -1).mean(1)
        np.testing.assert_allclose(metrics[f"recon_{stage}_mse"], mse, rtol=1e-5)
        np.testing.assert_allclose(metrics[f"recon_{stage}_psnr"], 10 * np.log10(1 / mse), rtol=1e-5)


def test_samples_do_not_depend_on_the_number_of_ranks(refiner, tmp_path):
    """Two ranks (threads with a real barrier) write disjoint files that together equal a one-rank run."""
    evaluate(eval_config(refiner, tmp_path / "one", "samples.n=10"))
    barrier = threading.Barrier(2)
    cfg = eval_config(refiner, tmp_path / "two", "samples.n=10")
    results, errors = {}, []

    def rank(r):
        try:
            results[r] = evaluate(cfg, torch.device("cpu"), Shard(r, 2, barrier.wait))
        except Exception as err:  # surfaced below
            errors.append(err)
            barrier.abort()

    threads = [threading.Thread(target=rank, args=(r,)) for r in (0, 1)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors and results[1] is None and results[0]["metrics"]["world_size"] == 2
    for folder in ("samples", "samples_stage_one"):
        one, two = pngs(tmp_path / "one" / folder), pngs(tmp_path / "two" / folder)
        assert len(one) == len(two) == 10 and all(np.array_equal(a, b) for a, b in zip(one, two))
    assert not np.array_equal(pngs(tmp_path / "one" / "samples")[0], pngs(tmp_path / "one" / "samples")[1])


def test_two_processes_on_the_cpu(refiner, tmp_path):
    """The real launcher: Lightning Fabric starts a second process; the result equals the one-process run."""
    evaluate(eval_config(refiner, tmp_path / "one", "samples.n=6"))
    overrides = [
        f"checkpoint={refiner}",
        f"out_dir={tmp_path / 'two'}",
        "batch_size=4",
        "sampler.steps=4",
        "samples.n=6",
        "devices=2",
        "accelerator=cpu",
        "num_workers=0",
    ]
    result = subprocess.run([sys.executable, "main/test_ddpm.py", *overrides], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((tmp_path / "two" / "results.json").read_text())["metrics"]["world_size"] == 2
    one, two = pngs(tmp_path / "one" / "samples"), pngs(tmp_path / "two" / "samples")
    assert len(two) == 6 and all(np.array_equal(a, b) for a, b in zip(one, two))


def test_existing_results_are_kept_unless_overwrite(refiner, tmp_path):
    out = tmp_path / "eval"
    evaluate(eval_config(refiner, out, "samples.n=2"))
    before = (out / "samples" / "000000.png").read_bytes()
    with pytest.raises(UserError, match="already holds results or other files: pass overwrite=true"):
        evaluate(eval_config(refiner, out, "samples.n=2", "seed=1"))
    assert (out / "samples" / "000000.png").read_bytes() == before
    evaluate(eval_config(refiner, out, "samples.n=2", "seed=1", "overwrite=true"))
    assert (out / "samples" / "000000.png").read_bytes() != before


def test_truncated_form2_style_start_and_guidance_run(refiner, tmp_path):
    out = tmp_path / "eval"
    evaluate(eval_config(refiner, out, "samples.n=3", "sampler.start_step=2", "sampler.guidance=1.5", "sampler=ddpm", "sampler.steps=4"))
    assert len(pngs(out / "samples")) == 3


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["tasks=[fid]"], r"unknown tasks \['fid'\]"),
        (["tasks=[interpolation]", "interpolation.groups=99"], r"interpolation.groups=99: use 1\.\.\d+"),
        (["sampler.steps=0"], r"number of sampling steps must be an integer in \[1, 100\]"),
        (["sampler.name=euler"], "unknown diffusion sampler 'euler'"),
        (["tasks=[speed_quality]", "speed_quality.samplers=[euler]"], r"list samplers among \['ddpm', 'ddim', 'dpm_solver'\]"),
    ],
)
def test_bad_settings_are_clear_errors(refiner, tmp_path, overrides, message):
    with pytest.raises(UserError, match=message):
        evaluate(eval_config(refiner, tmp_path / "eval", *overrides))


def test_a_stage_one_checkpoint_is_refused(tmp_path):
    stage_one = train_stage_one(tiny_train_config(tmp_path / "vae", "trainer.max_steps=2", "trainer.val_check_interval=2"))
    with pytest.raises(UserError, match="is of stage 'vae', but this command needs a 'ddpm' checkpoint"):
        evaluate(eval_config(stage_one, tmp_path / "eval"))


def test_slerp_keeps_endpoints_and_the_norm_of_orthogonal_draws():
    a, b = torch.zeros(1, 4), torch.zeros(1, 4)
    a[0, 0], b[0, 1] = 2.0, 2.0
    torch.testing.assert_close(slerp(a, b, 0.0), a)
    torch.testing.assert_close(slerp(a, b, 1.0), b)
    assert torch.allclose(slerp(a, b, 0.3).norm(), torch.tensor(2.0))
    assert torch.allclose(slerp(a, a, 0.5), a)  # parallel: falls back to the (exact) linear path


def test_shared_noise_starts_every_refinement_from_the_same_noise(refiner, tmp_path, monkeypatch):
    from main.systems.stage_two import StageTwoSystem

    seen, original = [], StageTwoSystem.refine

    def spy(self, y, sampler, labels=None, n=None, noise=None, generator=None):
        seen.append(noise)
        return original(self, y, sampler, labels, n, noise, generator)

    monkeypatch.setattr(StageTwoSystem, "refine", spy)
    evaluate(eval_config(refiner, tmp_path / "shared", "samples.n=6", "shared_noise=true"))
    assert len(seen) == 2 and all(torch.equal(noise[i], seen[0][0]) for noise in seen for i in range(len(noise)))
    seen.clear()
    evaluate(eval_config(refiner, tmp_path / "own", "samples.n=6"))
    assert seen == [None, None]  # drawn per batch from its seed


def test_a_nonfinite_stage_one_sample_is_refined_from_the_null_condition(refiner, tmp_path, monkeypatch):
    from main.models.vdvae import HierarchicalVAE

    original = HierarchicalVAE.sample

    def overflowing(self, n, *args, **kwargs):
        images = original(self, n, *args, **kwargs)
        images[0] = float("inf")
        return images

    monkeypatch.setattr(HierarchicalVAE, "sample", overflowing)
    out = tmp_path / "eval"
    results = evaluate(eval_config(refiner, out, "samples.n=6"))  # batches of 4 and 2: one bad image each
    assert results["metrics"]["nonfinite_stage_one_images"] == 2
    refined = np.load(out / "samples.npz")["images"]
    assert refined.shape[0] == 6 and refined[0].any() and refined[4].any()  # NaN would have written black images


def test_the_class_samples_grid_shows_every_class(refiner, tmp_path):
    """40 pairs (10 classes x 4): a row of stage-one images above a row of refinements per class, class 9 last."""
    out = tmp_path / "eval"
    evaluate(eval_config(refiner, out, "tasks=[class_samples]", "class_samples.n_per_class=4"))
    grid = np.asarray(Image.open(out / "class_samples_grid.png"))[..., 0]
    tile = 8 * 8 + 2  # 8x8 digits enlarged 8 times, 2 pixels of padding
    assert grid.shape == (20 * tile + 2, 4 * tile + 2)
    for row, folder in [(18, "class_samples_stage_one"), (19, "class_samples")]:
        for column in range(4):
            top, left = 2 + row * tile, 2 + column * tile
            expected = np.kron(pngs(out / folder)[36 + column], np.ones((8, 8), dtype=np.uint8))
            assert np.array_equal(grid[top : top + 64, left : left + 64], expected)
