"""The training-time FID/KID callback, offline: torch-fidelity's Inception with random weights from a local file."""

from __future__ import annotations

import csv
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers import ROOT, random_inception_weights, tiny_refiner_config, tiny_train_config
from omegaconf import OmegaConf

from main.callbacks.fid_metrics import FIDMetrics
from main.datasets import build_datamodule
from main.evaluation.common import batch_generator
from main.models.diffusion import SamplerConfig
from main.train_ae import build_system as build_stage_one
from main.train_ae import build_trainer, train
from main.train_ddpm import build_system
from main.utils.errors import UserError
from main.utils.image_io import to_uint8

N = 4  # samples per evaluation, and reference images: Inception at 299x299 costs ~0.3 s per image on one CPU thread


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return random_inception_weights(tmp_path_factory.mktemp("weights") / "inception-random.pth")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """N digits test images as an .npz (the val split's 180 would cost a minute of Inception)."""
    test = build_datamodule(OmegaConf.load(ROOT / "main" / "configs" / "dataset" / "digits.yaml"), batch_size=1).split("test")
    path = tmp_path_factory.mktemp("reference") / "digits.npz"
    np.savez(path, images=torch.stack([test[i][0] for i in range(N)]).permute(0, 2, 3, 1).numpy())
    return path


def fid_overrides(weights, reference, cache, *extra):
    """The callback on N samples in two batches against the N reference images, offline, caching under ``cache``."""
    files = [f"fid.reference={reference}", f"fid.weights={weights}", f"fid.cache={cache}"]
    return [f"fid.n_samples={N}", f"fid.batch_size={N // 2}", *files, *extra]


def metric_rows(run_dir) -> list[dict]:
    (path,) = (run_dir / "logs").glob("version_*/metrics.csv")
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_fid_is_logged_at_its_steps_and_leaves_training_unchanged(tmp_path, weights, reference):
    common = ["trainer.max_steps=10", "trainer.val_check_interval=10", "trainer.limit_val_batches=1"]
    with_fid = train(
        tiny_train_config(tmp_path / "fid", *common, *fid_overrides(weights, reference, tmp_path / "cache", "fid.every_n_steps=5"))
    )
    rows = metric_rows(tmp_path / "fid")
    scored = {int(r["step"]): (float(r["fid"]), float(r["kid_mean"])) for r in rows if r.get("fid")}
    assert sorted(scored) == [5, 10]
    assert all(math.isfinite(fid) and fid >= 0 and math.isfinite(kid) for fid, kid in scored.values())
    assert scored[5] != scored[10]  # scored from the weights of that step, not once
    assert len(list((tmp_path / "cache").glob("digits-*.npz"))) == 1  # the reference's features are cached there

    without = train(tiny_train_config(tmp_path / "off", *common))
    assert "fid" not in metric_rows(tmp_path / "off")[0]
    on, off = (torch.load(p, weights_only=True)["state_dict"] for p in (with_fid, without))
    assert on.keys() == off.keys() and all(torch.equal(on[k], off[k]) for k in on)  # sampling drew from its own generator


def test_off_by_default_and_every_n_epochs(tmp_path, weights, reference):
    assert not any(isinstance(c, FIDMetrics) for c in build_trainer(tiny_train_config(tmp_path / "a")).callbacks)
    cfg = tiny_train_config(tmp_path / "b", *fid_overrides(weights, reference, tmp_path / "cache", "fid.every_n_epochs=1"))
    (callback,) = [c for c in build_trainer(cfg).callbacks if isinstance(c, FIDMetrics)]
    assert callback.every_n_epochs == 1 and callback.every_n_steps == 0 and callback.n_samples == N


def test_step_and_epoch_triggers_score_each_step_once(monkeypatch):
    """Every 4 updates and every 2 epochs of 5 updates; a skipped update repeats its step; epoch 4 ends on a scored step."""
    callback = FIDMetrics({"name": "digits", "channels": 1}, every_n_steps=4, every_n_epochs=2)
    scored, logged = [], []
    monkeypatch.setattr(callback, "_score", lambda module, step: scored.append(step) or {"fid": float(step)})
    logger = SimpleNamespace(log_metrics=lambda metrics, step: logged.append((step, metrics["fid"])))
    broadcast = SimpleNamespace(broadcast=lambda obj, src: obj)
    trainer = SimpleNamespace(global_step=0, current_epoch=0, is_global_zero=True, loggers=[logger], strategy=broadcast)
    for epoch in range(4):
        trainer.current_epoch = epoch
        for step in range(5 * epoch + 1, 5 * epoch + 6):
            trainer.global_step = step
            callback.on_train_batch_end(trainer, None, None, None, 0)
            callback.on_train_batch_end(trainer, None, None, None, 0)
        callback.on_train_epoch_end(trainer, None)
    assert scored == [4, 8, 10, 12, 16, 20]
    assert logged == [(s, float(s)) for s in scored]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["fid.weights={tmp}/missing.pth"], "Inception weights file .* does not exist"),
        (["fid.reference={rgb}"], "has 3-channel images but the model makes 1-channel ones"),
        (["fid.reference=digits-holdout"], "unknown split 'holdout'"),
        (["fid.metrics=[fid,ppl]"], r"unknown metric\(s\) ppl in fid.metrics"),
    ],
)
def test_bad_settings_stop_the_run_before_the_first_step(tmp_path, weights, reference, overrides, message):
    rgb = tmp_path / "rgb.npz"
    np.savez(rgb, images=np.zeros((4, 8, 8, 3), np.uint8))
    overrides = [o.format(tmp=tmp_path, rgb=rgb) for o in overrides]
    on = fid_overrides(weights, reference, tmp_path / "cache", "fid.every_n_steps=1")
    cfg = tiny_train_config(tmp_path / "run", "trainer.max_steps=2", *on, *overrides)
    with pytest.raises(UserError, match=message):
        train(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()


class FakeSampler(torch.nn.Module):
    """A module with only `sample_images`: what the callback needs of a system."""

    device = torch.device("cpu")

    def __init__(self):
        super().__init__()
        self.modes = []

    def sample_images(self, n: int, generator: torch.Generator) -> torch.Tensor:
        self.modes.append(self.training)
        return torch.randint(0, 256, (n, 1, 8, 8), generator=generator, dtype=torch.uint8)


def test_any_image_sampler_is_scored_batch_by_batch_from_fixed_seeds():
    callback = FIDMetrics({"name": "digits", "channels": 1}, n_samples=5, batch_size=2, seed=3)
    scored = []
    callback.scorer = lambda images, cuda: scored.append(images) or {"fid": 1.5, "name": "not logged"}
    system = FakeSampler()
    assert callback._score(system, step=1) == {"fid": 1.5}
    expected = [FakeSampler().sample_images(count, batch_generator(3, first, "cpu")) for first, count in [(0, 2), (2, 2), (4, 1)]]
    assert torch.equal(scored[0], torch.cat(expected))
    assert system.modes == [False] * 3 and system.training  # drawn in eval mode, then restored


def test_stage_one_samples_at_the_temperature_it_carries(tmp_path):
    system = build_stage_one(tiny_train_config(tmp_path, "samples.temperature=0.5")).eval()
    assert system.hparams.preview_temperature == 0.5
    model = system.image_model
    expected = model.to_uint8(model.sample(3, temperature=0.5, generator=batch_generator(0, 0, "cpu")))
    assert torch.equal(system.sample_images(3, batch_generator(0, 0, "cpu")), expected)


def test_stage_two_is_scored_on_its_refined_images_alone_with_the_sampler_it_carries(tmp_path):
    """Its sample grid interleaves stage-one rows with the refined ones; FID must see only the refined images."""
    stage_one = train(tiny_train_config(tmp_path / "vae", "trainer.max_steps=2", "trainer.val_check_interval=2"))
    system = build_system(tiny_refiner_config(tmp_path / "ddpm", stage_one, "samples.sampler.steps=2")).eval()
    assert system.preview_sampler == SamplerConfig(steps=2) and system.hparams.preview_sampler["steps"] == 2  # a plain dict
    images = system.sample_images(5, batch_generator(0, 0, "cpu"))
    _, refined = system.generate(5, SamplerConfig(steps=2), generator=batch_generator(0, 0, "cpu"))
    assert images.dtype == torch.uint8 and torch.equal(images, to_uint8(refined))
    grid, per_row = system.preview_grid(5, batch_generator(0, 0, "cpu"))
    assert len(grid) == 10 and per_row == 5 and torch.equal(grid[per_row:], images)
