"""main/fid.py end to end without internet: torch-fidelity's Inception with random weights from a local file (fast)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import ROOT, random_inception_weights
from omegaconf import OmegaConf
from PIL import Image

from main.evaluation.fid import load_reference
from main.fid import main
from main.models.inception import WEIGHTS_URL
from main.utils.errors import UserError

N = 16  # Inception at 299x299 costs ~0.25 s per image on one CPU thread


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return random_inception_weights(tmp_path_factory.mktemp("weights") / "inception-random.pth")


def write_pngs(folder, brighten: int = 0, seed: int = 0):
    """N structured 32x32 RGB images: random coloured rectangles on a gradient, optionally brightened."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    ramp = np.linspace(0, 120, 32, dtype=np.float32)
    for i in range(N):
        image = np.stack([ramp[None, :].repeat(32, 0), ramp[:, None].repeat(32, 1), np.full((32, 32), 60.0)], -1)
        y, x = rng.integers(0, 20, 2)
        image[y : y + 12, x : x + 12] = rng.integers(0, 255, 3)
        image = np.clip(image + brighten, 0, 255).astype(np.uint8)
        Image.fromarray(image).save(folder / f"{i:06d}.png")
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    return write_pngs(root / "a" / "samples"), write_pngs(root / "b" / "samples", brighten=100, seed=1), root


def test_identical_sets_near_zero_and_schema(weights, folders):
    a, _, root = folders
    results = main([str(a), str(a), "--weights", str(weights), "--cache", str(root / "cache"), "--device", "cpu"])
    written = json.loads((a.parent / "fid.json").read_text())
    assert written == json.loads(json.dumps(results, default=str))
    assert {"task", "checkpoint", "metrics", "timings", "config", "versions"} <= set(written)
    assert written["task"] == "fid" and written["checkpoint"] is None
    metrics = written["metrics"]
    assert metrics["n_samples"] == N and metrics["n_reference"] == N
    assert "50,000" in metrics["note"] and "biased upward" in metrics["note"]
    assert abs(metrics["fid"]) < 1e-3  # ~1e-6 here


def test_brightened_set_is_farther_and_kid_runs(weights, folders):
    a, b, root = folders
    out = root / "b.json"
    # the reference `a` is the same folder as before: its features come from the cache
    main([str(b), str(a), "--weights", str(weights), "--cache", str(root / "cache"), "--metrics", "fid,kid", "--json", str(out)])
    metrics = json.loads(out.read_text())["metrics"]
    assert metrics["fid"] > 1.0  # ~2.8 here; ~0.5 for another draw of the unbrightened images
    assert np.isfinite(metrics["kid_mean"]) and metrics["kid_mean"] > 0 and metrics["kid_subset_size"] == N
    assert len(list((root / "cache").glob("samples-*.npz"))) == 2  # a's and b's features (named by folder and digest)


def test_missing_weights_is_one_line_naming_the_url(folders, tmp_path, capsys):
    a, _, _ = folders
    with pytest.raises(SystemExit) as exit_info:
        main([str(a), str(a), "--weights", str(tmp_path / "nope.pth"), "--cache", str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and WEIGHTS_URL in err and "--weights" in err
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit):
        main([str(a), str(a), "--weights", str(tmp_path / "bad.pth"), "--cache", str(tmp_path)])
    assert WEIGHTS_URL in capsys.readouterr().err


def test_other_errors_are_one_line(folders, tmp_path, capsys):
    a, _, _ = folders
    gray = tmp_path / "gray.npz"
    np.savez(gray, images=np.zeros((4, 32, 32), np.uint8))
    for argv, expected in [
        ([str(tmp_path / "missing"), str(a)], "does not exist"),
        ([str(tmp_path), str(a)], "no .png/.jpg images"),
        ([str(a), "cifar11-train"], "unknown reference"),
        ([str(a), "cifar10-holdout"], "unknown reference"),
        ([str(gray), str(a)], "grayscale"),
    ]:
        with pytest.raises(SystemExit):
            main([*argv, "--weights", str(tmp_path / "unused.pth")])
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and expected in err, (argv, err)


def test_dataset_split_reference_resolves_through_our_config():
    images, cache_name = load_reference("digits-test", None)
    assert len(images) == 180 and images.channels == 1 and cache_name.startswith("digits-test-")
    first = images[0]
    assert first.dtype == torch.uint8 and tuple(first.shape) == (3, 8, 8)
    assert torch.equal(first[0], first[2])


def test_a_runs_own_data_set_serves_its_splits_with_its_settings(tmp_path):
    """`<name>-<split>` of a run's data set reads its root and settings; the cache name follows the whole config."""
    write_pngs(tmp_path / "data" / "test")
    write_pngs(tmp_path / "data" / "train", seed=1)
    cfg = OmegaConf.load(ROOT / "main" / "configs" / "dataset" / "folder.yaml")
    cfg.root = str(tmp_path / "data")
    images, name = load_reference("folder-test", dataset_cfg=cfg)
    assert len(images) == N and images.channels == 3 and tuple(images[0].shape) == (3, 32, 32) and name.startswith("folder-test-")
    cfg.image_size = 16
    resized, other_name = load_reference("folder-test", dataset_cfg=cfg)
    assert tuple(resized[0].shape) == (3, 16, 16) and other_name != name
    with pytest.raises(UserError, match="dataset.root is not set"):
        load_reference("folder-test")  # folder.yaml's own root is null: only the run's config knows it
    with pytest.raises(UserError, match="unknown split 'holdout'"):
        load_reference("folder-holdout", dataset_cfg=cfg)
