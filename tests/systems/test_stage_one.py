"""Training stage one: the loss falls, resume continues the same run, bad updates never land."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from helpers import tiny_train_config

from main.datasets import build_datamodule
from main.models.vdvae import HierarchicalVAE
from main.systems.stage_one import StageOneSystem, load_stage_one
from main.train_ae import build_system, build_trainer, train
from main.utils.errors import UserError


def val_bpd(vae: HierarchicalVAE, cfg) -> float:
    torch.manual_seed(0)
    val = build_datamodule(cfg.dataset, batch_size=200).val_dataloader()
    with torch.no_grad():
        losses = [vae(x, y).loss for x, y in val]
    return float(torch.cat(losses).mean() / math.log(2))


def fresh_system(cfg) -> StageOneSystem:
    torch.manual_seed(cfg.seed)
    return build_system(cfg)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny digits model trained for 135 steps (3 epochs), shared by the tests below."""
    run_dir = tmp_path_factory.mktemp("run")
    cfg = tiny_train_config(run_dir, "trainer.max_steps=135", "trainer.val_check_interval=45", "samples.every_n_steps=45", "samples.n=4")
    return cfg, train(cfg)


def test_validation_bits_per_dim_falls(trained):
    cfg, last = trained
    before = val_bpd(fresh_system(cfg).vae, cfg)
    system, checkpoint = load_stage_one(last)
    after = val_bpd(system.ema_vae, cfg)
    assert checkpoint["global_step"] == 135
    assert after < before - 0.3, f"val bpd {before:.2f} -> {after:.2f}"


def test_sample_grids_are_written_every_n_steps(trained):
    cfg, _ = trained
    grids = sorted(p.name for p in (Path(cfg.run_dir) / "samples").glob("*.png"))
    assert grids == ["step_0000045.png", "step_0000090.png", "step_0000135.png"]


def test_metrics_are_logged_to_csv(trained):
    cfg, _ = trained
    header = next((Path(cfg.run_dir) / "logs").glob("*/metrics.csv")).read_text().splitlines()[0].split(",")
    assert {"train/bpd", "train/grad_norm", "train/skipped_updates", "val/bpd_given_label", "val/active_groups"} <= set(header)
    assert "val/bpd" not in header  # digits is class-conditional: its bits/dim are -log p(x|c)


def test_checkpoint_carries_config_and_loads_without_code(trained):
    cfg, last = trained
    checkpoint = torch.load(last, weights_only=True)  # raises if anything but data was pickled
    assert checkpoint["stage"] == "vae"
    assert checkpoint["hyper_parameters"]["model"]["width"] == 16
    assert checkpoint["hyper_parameters"]["data"]["name"] == "digits"


def test_resume_continues_the_same_run(tmp_path):
    """45 steps, stop, resume to 90 == 90 steps uninterrupted (weights, EMA, optimizer, counters)."""
    straight = tiny_train_config(tmp_path / "a", "trainer.max_steps=90", "trainer.val_check_interval=45")
    reference, _ = load_stage_one(train(straight))
    first = tiny_train_config(tmp_path / "b", "trainer.max_steps=45", "trainer.val_check_interval=45")
    train(first)
    resumed_cfg = tiny_train_config(tmp_path / "b", "trainer.max_steps=90", "trainer.val_check_interval=45", "resume=true")
    resumed, checkpoint = load_stage_one(train(resumed_cfg))
    assert checkpoint["global_step"] == 90
    for (name, a), b in zip(reference.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=f"{name} differs after resume")


def test_a_run_refuses_to_overwrite_its_checkpoints(trained):
    cfg, _ = trained
    with pytest.raises(UserError, match="already holds checkpoints: pass resume=true"):
        train(cfg)


def test_resume_without_a_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="resume=true but .*last.ckpt' does not exist"):
        train(tiny_train_config(tmp_path, "resume=true"))


def fit_and_keep_system(cfg) -> StageOneSystem:
    """Run training in-process and return the system object the trainer updated (even if training raised)."""
    system = build_system(cfg)
    datamodule = build_datamodule(cfg.dataset, batch_size=cfg.vae.batch_size, seed=cfg.seed)
    try:
        build_trainer(cfg).fit(system, datamodule=datamodule)
    except UserError as err:
        system.error = err
    return system


def test_updates_past_the_skip_threshold_never_reach_the_weights(tmp_path):
    cfg = tiny_train_config(tmp_path, "trainer.max_steps=20", "vae.optim.skip_threshold=1e-9", "vae.optim.max_consecutive_skips=5")
    torch.manual_seed(cfg.seed)
    before = {k: v.clone() for k, v in build_system(cfg).state_dict().items()}
    torch.manual_seed(cfg.seed)  # the same initial weights again
    system = fit_and_keep_system(cfg)
    assert "5 updates in a row were skipped" in str(system.error)
    assert int(system.skipped_updates) == 5
    after = system.state_dict()
    changed = [k for k, v in before.items() if k.startswith(("vae.", "ema.module.")) and not torch.equal(v, after[k])]
    assert changed == []


def test_gradients_are_freed_before_the_next_forward_pass(tmp_path, monkeypatch):
    """The last update's gradients would sit in memory beside the next forward pass's activations (raising the peak of
    large presets by their size, bench.sh presets): every training forward starts with none, after taken or skipped updates."""
    original = HierarchicalVAE.forward
    stale = []

    def recording(self, x, labels=None):
        if self.training:
            stale.append(sum(p.grad is not None for p in self.parameters()))
        return original(self, x, labels)

    monkeypatch.setattr(HierarchicalVAE, "forward", recording)
    cfg = tiny_train_config(tmp_path, "trainer.max_steps=3", "vae.optim.skip_threshold=1e-9", "vae.optim.max_consecutive_skips=2")
    fit_and_keep_system(cfg)  # the first update is skipped, and so is the second, which stops the run
    cfg = tiny_train_config(tmp_path / "taken", "trainer.max_steps=3")
    fit_and_keep_system(cfg)
    assert len(stale) >= 4 and not any(stale)


def test_a_nan_loss_is_skipped_and_counted(tmp_path, monkeypatch):
    """One batch yields NaN: the update is skipped, counted, and no NaN reaches weights, EMA or checkpoint."""
    original = HierarchicalVAE.forward
    calls = {"n": 0}

    def poisoned(self, x, labels=None):
        elbo = original(self, x, labels)
        calls["n"] += 1
        if self.training and calls["n"] == 3:
            elbo.loss = elbo.loss * float("nan")
        return elbo

    monkeypatch.setattr(HierarchicalVAE, "forward", poisoned)
    cfg = tiny_train_config(tmp_path, "trainer.max_steps=6", "trainer.val_check_interval=6", "trainer.num_sanity_val_steps=0")
    system, _ = load_stage_one(train(cfg))
    assert int(system.skipped_updates) == 1
    assert all(torch.isfinite(v).all() for v in system.state_dict().values() if v.is_floating_point())


@pytest.mark.parametrize(("logger", "expected"), [("csv", "CSVLogger"), ("tensorboard", "TensorBoardLogger"), ("wandb", "WandbLogger")])
def test_each_logger_config_builds_and_wandb_stays_offline(tmp_path, logger, expected):
    from hydra.utils import instantiate

    cfg = tiny_train_config(tmp_path, f"logger={logger}")
    built = instantiate(cfg.logger)
    assert type(built).__name__ == expected
    if logger == "wandb":
        assert cfg.logger.offline is True


def test_bf16_mixed_precision_trains_on_the_cpu(tmp_path):
    """(16-mixed is refused on the CPU, where Lightning would run bf16; real fp16 is tested in test_refiner_skips.py.)"""
    cfg = tiny_train_config(tmp_path, "trainer.precision=bf16-mixed", "trainer.max_steps=5", "trainer.val_check_interval=5")
    system, checkpoint = load_stage_one(train(cfg))
    assert checkpoint["global_step"] == 5 and int(system.skipped_updates) == 0
    assert all(torch.isfinite(v).all() for v in system.state_dict().values() if v.is_floating_point())


def test_updates_after_the_last_validation_are_checkpointed(tmp_path):
    """max_steps=7 with validations every 5: last.ckpt still holds all 7 updates."""
    cfg = tiny_train_config(tmp_path, "trainer.max_steps=7", "trainer.val_check_interval=5")
    _, checkpoint = load_stage_one(train(cfg))
    assert checkpoint["global_step"] == 7
