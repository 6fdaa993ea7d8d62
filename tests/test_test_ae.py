"""Evaluation and sampling from a checkpoint alone, and the checkpoint checks."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
import torch
from helpers import compose_config, tiny_train_config
from PIL import Image

from main.datasets import build_datamodule
from main.evaluation.stage_one import evaluate
from main.systems.stage_one import load_stage_one
from main.train_ae import train
from main.utils.errors import UserError


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    return train(tiny_train_config(run_dir, "trainer.max_steps=10", "trainer.val_check_interval=10"))


def eval_config(checkpoint, out_dir, *overrides):
    return compose_config(
        "test_ae",
        [f"checkpoint={checkpoint}", f"out_dir={out_dir}", "num_workers=0", "batch_size=16", "device=cpu", *overrides],
    )


def test_every_task_writes_images_grids_npz_and_results(checkpoint, tmp_path):
    out = tmp_path / "eval"
    cfg = eval_config(
        checkpoint,
        out,
        "tasks=[bpd,samples,class_samples,reconstructions]",
        "samples.n=20",
        "class_samples.n_per_class=2",
        "reconstructions.n=3",
        "reconstructions.k=[0,all]",
    )
    results = evaluate(cfg)
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["metrics"] == pytest.approx(results["metrics"])
    assert set(on_disk) == {"task", "checkpoint", "metrics", "timings", "config", "versions"}
    metrics = on_disk["metrics"]
    assert 0 < metrics["test_bpd"] < 16 and metrics["n_params"] > 0 and metrics["global_step"] == 10
    assert on_disk["timings"]["train_seconds"] > 0 and on_disk["timings"]["sampling_images_per_s"] > 0
    pngs = sorted((out / "samples").glob("*.png"))
    assert len(pngs) == 20 and np.asarray(Image.open(pngs[0])).shape == (8, 8)
    assert np.load(out / "samples.npz")["images"].shape == (20, 8, 8, 1)
    class_npz = np.load(out / "class_samples.npz")
    assert class_npz["images"].shape == (20, 8, 8, 1) and list(class_npz["labels"]) == [c for c in range(10) for _ in range(2)]
    assert sorted(p.name for p in (out / "reconstructions").iterdir())[0] == "k0"
    assert len(list((out / "reconstructions").glob("k*/*.png"))) == 6
    for grid in ["samples_grid.png", "class_samples_grid.png", "reconstructions_grid.png"]:
        assert (out / grid).stat().st_size > 0
    assert not list(tmp_path.glob("**/.*.partial"))


def test_reconstructions_take_k_in_pixels_all_and_numbers(checkpoint, tmp_path):
    """The digits VAE's groups sit at [1, 4, 4, 4, 4, 8, 8, 8, 8, 8] pixels: '4px' is k=5; 'all' and 10 are the same k."""
    common = ["tasks=[reconstructions]", "reconstructions.n=3"]
    metrics = evaluate(eval_config(checkpoint, tmp_path / "px", *common, "reconstructions.k=[4px,all,10]"))["metrics"]
    assert sorted(key for key in metrics if key.startswith("recon_mse")) == ["recon_mse_k10", "recon_mse_k5"]
    evaluate(eval_config(checkpoint, tmp_path / "int", *common, "reconstructions.k=5"))
    px, number = (sorted((tmp_path / run / "reconstructions" / "k5").glob("*.png")) for run in ("px", "int"))
    assert len(px) == 3 and [p.read_bytes() for p in px] == [p.read_bytes() for p in number]
    with pytest.raises(UserError, match=r"reconstructions.k='eleven': use 'all', an integer 0\.\.10 .* '<R>px'"):
        evaluate(eval_config(checkpoint, tmp_path / "bad", *common, "reconstructions.k=[0,eleven]"))


def test_iw_bpd_reports_both_bounds_on_the_same_images_with_standard_errors(checkpoint, tmp_path):
    out = tmp_path / "eval"
    metrics = evaluate(eval_config(checkpoint, out, "tasks=[bpd,iw_bpd]", "iw_bpd.samples=16", "iw_bpd.n_images=40"))["metrics"]
    assert metrics["iw_images"] == 40 and metrics["iw_samples"] == 16
    # The model is class-conditional and scored with the labels: bounds on -log p(x|c), named so.
    elbo, iw, gain = (metrics[f"test_{key}_given_label"] for key in ("elbo_bpd", "iw_bpd", "iw_gain_bpd"))
    assert iw < elbo  # 16 samples tighten the bound
    assert gain == pytest.approx(elbo - iw)
    assert 0 < metrics["test_iw_gain_bpd_given_label_se"] < metrics["test_elbo_bpd_given_label_se"]
    assert 0 < metrics["test_iw_bpd_given_label_se"] < 1 and 0 < metrics["test_elbo_bpd_given_label_se"] < 1
    assert not {"test_elbo_bpd", "test_iw_bpd"} & set(metrics)
    # The ELBO on 40 images is within a few standard errors of the whole test set's.
    assert abs(elbo - metrics["test_bpd_given_label"]) < 6 * metrics["test_elbo_bpd_given_label_se"] + 0.05
    kl = metrics["kl_per_group_bpd"]
    assert len(kl) == load_stage_one(checkpoint)[0].vae.num_groups and min(kl) >= 0
    assert Image.open(out / "plots" / "kl_per_group.png").size[0] > 100


def manual_bpd(checkpoint, seed: int, null_labels: bool) -> float:
    """The test split's mean bits/dim scored by hand, batch by batch as evaluate does, with the labels or the null label."""
    system, saved = load_stage_one(checkpoint)
    data = build_datamodule(saved["hyper_parameters"]["data"], batch_size=16, num_workers=0, seed=seed)
    data.setup("test")
    torch.manual_seed(seed)
    with torch.no_grad():
        bpd = [system.eval().ema_vae(x, torch.full_like(y, -1) if null_labels else y).bits_per_dim for x, y in data.test_dataloader()]
    return float(torch.cat(bpd).double().mean())


def test_a_class_conditional_model_reports_its_bound_given_the_label_and_without(checkpoint, tmp_path):
    """-log p(x|c) with each image's label is test_bpd_given_label; test_bpd is -log p(x), scored with the null label."""
    metrics = evaluate(eval_config(checkpoint, tmp_path / "eval", "tasks=[bpd]", "seed=3"))["metrics"]
    assert metrics["test_bpd_given_label"] == pytest.approx(manual_bpd(checkpoint, 3, null_labels=False), rel=1e-5)
    assert metrics["test_bpd"] == pytest.approx(manual_bpd(checkpoint, 3, null_labels=True), rel=1e-5)
    assert abs(metrics["test_bpd"] - metrics["test_bpd_given_label"]) > 1e-4
    assert {"test_rate", "test_rate_given_label", "test_distortion", "test_distortion_given_label"} <= set(metrics)


def test_a_class_conditional_model_never_trained_without_labels_reports_only_the_bound_given_the_label(checkpoint, tmp_path):
    """label_dropout=0: the null label was never trained, so its number would not be the model's -log p(x)."""
    saved = torch.load(checkpoint, weights_only=True)
    saved["hyper_parameters"]["label_dropout"] = 0.0
    torch.save(saved, tmp_path / "no_dropout.ckpt")
    metrics = evaluate(eval_config(tmp_path / "no_dropout.ckpt", tmp_path / "eval", "tasks=[bpd]"))["metrics"]
    assert 0 < metrics["test_bpd_given_label"] < 16 and "test_bpd" not in metrics


def test_an_unconditional_model_reports_test_bpd_only(tmp_path):
    run = train(tiny_train_config(tmp_path / "run", "vae.model.num_classes=0", "trainer.max_steps=2", "trainer.val_check_interval=2"))
    metrics = evaluate(eval_config(run, tmp_path / "eval", "tasks=[bpd]"))["metrics"]
    assert 0 < metrics["test_bpd"] < 16 and not [key for key in metrics if "given_label" in key]


def test_existing_results_are_not_overwritten_unless_asked(checkpoint, tmp_path):
    out = tmp_path / "eval"
    evaluate(eval_config(checkpoint, out, "tasks=[samples]", "samples.n=4"))
    first = (out / "samples" / "000000.png").read_bytes()
    with pytest.raises(UserError, match="already holds results or other files: pass overwrite=true"):
        evaluate(eval_config(checkpoint, out, "tasks=[samples]", "samples.n=4", "seed=1"))
    assert (out / "samples" / "000000.png").read_bytes() == first
    evaluate(eval_config(checkpoint, out, "tasks=[samples]", "samples.n=4", "seed=1", "overwrite=true"))
    assert (out / "samples" / "000000.png").read_bytes() != first


def test_sampling_is_repeatable_under_a_seed(checkpoint, tmp_path):
    evaluate(eval_config(checkpoint, tmp_path / "a", "tasks=[samples]", "samples.n=8"))
    evaluate(eval_config(checkpoint, tmp_path / "b", "tasks=[samples]", "samples.n=8"))
    evaluate(eval_config(checkpoint, tmp_path / "c", "tasks=[samples]", "samples.n=8", "seed=1"))
    a, b, c = (np.load(tmp_path / d / "samples.npz")["images"] for d in "abc")
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_a_temperature_list_must_match_the_latent_groups(checkpoint, tmp_path):
    with pytest.raises(UserError, match="temperature has 2 values but the model has 10 latent groups"):
        evaluate(eval_config(checkpoint, tmp_path, "tasks=[samples]", "samples.temperature=[0.5,0.5]"))


def test_unknown_task_is_a_clear_error(checkpoint, tmp_path):
    with pytest.raises(UserError, match=r"unknown tasks \['fid'\]"):
        evaluate(eval_config(checkpoint, tmp_path, "tasks=[fid]"))


def test_checkpoint_of_another_stage_is_refused(checkpoint, tmp_path):
    other = torch.load(checkpoint, weights_only=True)
    other["stage"] = "ddpm"
    torch.save(other, tmp_path / "ddpm.ckpt")
    with pytest.raises(UserError, match="is of stage 'ddpm', but this command needs a 'vae' checkpoint"):
        evaluate(eval_config(tmp_path / "ddpm.ckpt", tmp_path / "out"))


def test_truncated_checkpoint_is_refused(checkpoint, tmp_path):
    data = checkpoint.read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="is truncated or corrupt"):
        evaluate(eval_config(tmp_path / "cut.ckpt", tmp_path / "out"))


class _RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['GENVAE_PWNED']}",))


def test_checkpoint_that_would_run_code_is_refused(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("GENVAE_PWNED", str(marker))
    with open(tmp_path / "evil.ckpt", "wb") as f:
        torch.save({"state_dict": {}, "stage": "vae", "payload": _RunsCode()}, f, pickle_module=pickle)
    with pytest.raises(UserError, match="holds objects other than tensors and plain data"):
        evaluate(eval_config(tmp_path / "evil.ckpt", tmp_path / "out"))
    assert not marker.exists()


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="does not exist: pass the path of a .ckpt file"):
        evaluate(eval_config(tmp_path / "nope.ckpt", tmp_path / "out"))


def test_dataset_overrides_replace_only_what_the_command_line_sets(checkpoint, tmp_path):
    """`dataset.root=...` composes without Hydra's `+` and overrides the checkpoint's root; unset keys keep its values."""
    from main.evaluation.common import dataset_config

    trained = {"name": "cifar10", "root": "/trained/here", "download": False}
    moved = dataset_config(trained, eval_config(checkpoint, tmp_path, "dataset.root=/moved/there").dataset)
    assert moved.root == "/moved/there" and moved.download is False
    assert dataset_config(trained, eval_config(checkpoint, tmp_path).dataset).root == "/trained/here"
