"""Guarded updates: a refiner batch with a non-finite loss or gradient is skipped the way stage one skips it.

Never reaching the weights, the optimizer, the EMA or a checkpoint; counted, logged, and the same decision
on every rank. Also fp16 loss scaling (Lightning's 16-mixed on the CPU): clipping sees unscaled gradients,
an overflow is skipped and lowers the loss scale.
"""

from __future__ import annotations

import copy
import csv

import lightning.pytorch as pl
import pytest
import torch
from helpers import tiny_refiner_config, tiny_train_config
from lightning.pytorch.plugins import MixedPrecision

from main.datasets import build_datamodule
from main.systems.stage_two import StageTwoSystem, load_stage_two
from main.train_ae import build_system as build_stage_one
from main.train_ae import train as train_stage_one
from main.train_ddpm import build_system, train
from main.training import build_trainer, fit
from main.utils.checkpoint import load_checkpoint

BAD_BATCH = 2  # batch_idx of the poisoned batch


@pytest.fixture(scope="module")
def stage_one(tmp_path_factory):
    return train_stage_one(tiny_train_config(tmp_path_factory.mktemp("stage_one"), "trainer.max_steps=2", "trainer.val_check_interval=2"))


class InfiniteGradient(torch.autograd.Function):
    """Identity whose gradient is infinite: a finite loss with a non-finite gradient."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("inf")


BAD = {"nan_loss": lambda loss: loss * float("nan"), "inf_gradient": InfiniteGradient.apply}


def poison_training_batch(monkeypatch, bad: str) -> None:
    """Make the refiner's training loss of batch BAD_BATCH bad (validation, which scores the EMA weights, is left alone)."""
    original, calls = StageTwoSystem.loss, []

    def loss(self, unet, images, labels, keep=None, generator=None):
        value = original(self, unet, images, labels, keep, generator)
        if unet is self.unet:
            calls.append(1)
            return BAD[bad](value) if len(calls) == BAD_BATCH + 1 else value
        return value

    monkeypatch.setattr(StageTwoSystem, "loss", loss)


class AroundBadBatch(pl.Callback):
    """Copies of the weights, EMA and optimizer state just before and just after batch BAD_BATCH."""

    def state(self, trainer, module):
        tensors = {k: v.clone() for k, v in module.state_dict().items() if k.startswith(("unet.", "ema."))}
        return tensors, copy.deepcopy(trainer.optimizers[0].state_dict())

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if batch_idx == BAD_BATCH:
            self.before = self.state(trainer, module)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if batch_idx == BAD_BATCH:
            self.after = self.state(trainer, module)
            self.grad_norm = trainer.callback_metrics["train/grad_norm"]


def assert_untouched(around: AroundBadBatch) -> None:
    (weights, optimizer), (weights_after, optimizer_after) = around.before, around.after
    assert weights.keys() == weights_after.keys() and any(k.startswith("ema.module.") for k in weights)
    for name, tensor in weights.items():
        assert torch.equal(tensor, weights_after[name]), name
    torch.testing.assert_close(optimizer_after, optimizer, rtol=0, atol=0)


def fit_refiner(cfg, trainer: pl.Trainer) -> tuple[StageTwoSystem, AroundBadBatch]:
    around = AroundBadBatch()
    trainer.callbacks.append(around)
    system = build_system(cfg)
    fit(cfg, system, trainer, cfg.ddpm.batch_size)
    return system, around


@pytest.mark.parametrize("bad", ["nan_loss", "inf_gradient"])
def test_a_bad_batch_is_skipped_counted_and_training_goes_on(tmp_path, stage_one, monkeypatch, bad):
    poison_training_batch(monkeypatch, bad)
    # val_check_interval counts batches, skipped ones too: the fifth batch makes the fourth update and the checkpoint
    cfg = tiny_refiner_config(tmp_path, stage_one, "trainer.max_steps=4", "trainer.val_check_interval=5", "trainer.log_every_n_steps=1")
    system, around = fit_refiner(cfg, build_trainer(cfg, monitor="val/loss"))
    assert_untouched(around)
    assert not torch.isfinite(around.grad_norm)
    assert int(system.skipped_updates) == 1
    checkpoint = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt", "ddpm")
    assert checkpoint["global_step"] == 4  # four good updates from five batches: the skipped one does not count
    assert checkpoint["lr_schedulers"][0]["last_epoch"] == 4  # nor does it advance the warm-up
    assert int(checkpoint["state_dict"]["skipped_updates"]) == 1
    assert all(torch.isfinite(v).all() for v in checkpoint["state_dict"].values() if v.is_floating_point())
    rows = list(csv.DictReader(next(tmp_path.glob("logs/version_*/metrics.csv")).open()))
    assert [float(r["train/skipped_updates"]) for r in rows if r.get("train/skipped_updates")] == [0, 0, 1, 1, 1]


def test_a_batch_bad_on_another_rank_is_skipped_here_too(tmp_path, stage_one, monkeypatch):
    """The verdict is the all-reduced one: a rank whose own batch is fine still skips when another rank's is not."""
    cfg = tiny_refiner_config(tmp_path, stage_one, "trainer.max_steps=4", "trainer.val_check_interval=5")
    trainer = build_trainer(cfg, monitor="val/loss")
    verdicts = []

    def reduce(tensor, group=None, reduce_op="mean"):  # what DDP would return if the other rank's batch were bad
        if tensor.ndim == 1:  # the update's [metrics..., unhealthy] vector
            verdicts.append(float(tensor[-1]))
            if len(verdicts) == BAD_BATCH + 1:
                tensor = torch.cat([tensor[:-1], (tensor[-1:] + 1) / 2])
        return tensor

    monkeypatch.setattr(trainer.strategy, "reduce", reduce)
    system, around = fit_refiner(cfg, trainer)
    assert verdicts[BAD_BATCH] == 0  # this rank's own batch was healthy
    assert_untouched(around)
    assert torch.isfinite(around.grad_norm)
    assert int(system.skipped_updates) == 1 and trainer.global_step == 4


def fp16_trainer(max_steps: int, callbacks=()) -> pl.Trainer:
    """16-mixed on the CPU for real: Lightning's precision string would switch to bf16-mixed there, its plugin does not."""
    return pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=max_steps,
        plugins=[MixedPrecision("16-mixed", "cpu")],
        callbacks=list(callbacks),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )


class GradientsAfterStep(pl.Callback):
    """The norm of the (still loss-scaled) gradients the optimizer steps with, which the update frees, and the logged norm."""

    def on_before_optimizer_step(self, trainer, module, optimizer):
        self.norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in module.parameters() if p.grad is not None]))

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.logged = trainer.callback_metrics["train/grad_norm"]


@pytest.mark.parametrize("stage", ["vae", "ddpm"])
def test_fp16_clipping_sees_unscaled_gradients(tmp_path, stage_one, stage):
    """The optimizer steps with gradients clipped to grad_clip (times the loss scale); the logged norm is the unscaled one."""
    clip = 1e-3
    if stage == "vae":
        cfg = tiny_train_config(tmp_path, f"vae.optim.grad_clip={clip}")
        build, batch_size = build_stage_one, cfg.vae.batch_size
    else:
        cfg = tiny_refiner_config(tmp_path, stage_one, f"ddpm.optim.grad_clip={clip}")
        build, batch_size = build_system, cfg.ddpm.batch_size
    seen = GradientsAfterStep()
    trainer = fp16_trainer(1, [seen])
    torch.manual_seed(0)
    trainer.fit(build(cfg), datamodule=build_datamodule(cfg.dataset, batch_size=batch_size))
    assert trainer.precision_plugin.scaler.get_scale() == 2.0**16  # the gradients were scaled by 65536
    torch.testing.assert_close(seen.norm / 2.0**16, torch.tensor(clip), rtol=1e-2, atol=0)
    assert 10 * clip < seen.logged < 1e3  # clipped from an unscaled norm (scaled, it would be 65536 times larger)


def test_fp16_overflow_is_skipped_and_lowers_the_loss_scale(tmp_path, stage_one, monkeypatch):
    poison_training_batch(monkeypatch, "inf_gradient")
    cfg = tiny_refiner_config(tmp_path, stage_one)
    around = AroundBadBatch()
    trainer = fp16_trainer(4, [around])
    system = build_system(cfg)
    trainer.fit(system, datamodule=build_datamodule(cfg.dataset, batch_size=cfg.ddpm.batch_size))
    assert_untouched(around)
    assert int(system.skipped_updates) == 1 and trainer.global_step == 4
    assert trainer.precision_plugin.scaler.get_scale() == 2.0**15


def test_refiner_checkpoints_from_before_guarded_updates_load_and_resume(tmp_path, stage_one):
    """Older refiner checkpoints (automatic optimisation, no skip counters) still sample, and resume at their step."""
    last = train(tiny_refiner_config(tmp_path, stage_one, "trainer.max_steps=2", "trainer.val_check_interval=2"))
    checkpoint = torch.load(last, weights_only=True)
    for name in ("skipped_updates", "consecutive_skips"):
        del checkpoint["state_dict"][name]
    loop = checkpoint["loops"]["fit_loop"]
    manual = loop["epoch_loop.manual_optimization.optim_step_progress"]
    loop["epoch_loop.automatic_optimization.optim_progress"]["optimizer"]["step"] = copy.deepcopy(manual)
    for tracker in manual.values():
        tracker.update(ready=0, completed=0)
    torch.save(checkpoint, last)

    system, _ = load_stage_two(last)
    assert int(system.skipped_updates) == 0
    resumed = load_checkpoint(
        train(tiny_refiner_config(tmp_path, stage_one, "trainer.max_steps=4", "trainer.val_check_interval=2", "resume=true")), "ddpm"
    )
    assert resumed["global_step"] == 4
    assert resumed["lr_schedulers"][0]["last_epoch"] == int(resumed["state_dict"]["ema.n_averaged"]) == 4  # 2 more updates, not 4
