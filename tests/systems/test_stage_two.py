"""Training the refiner: the loss falls, stage one stays frozen and travels in the checkpoint, bad setups fail clearly."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_refiner_config, tiny_train_config

from main.models.diffusion import SamplerConfig
from main.systems.stage_one import load_stage_one
from main.systems.stage_two import StageTwoSystem, interleave_rows, load_stage_two
from main.train_ae import train as train_stage_one
from main.train_ddpm import build_system, train
from main.utils.checkpoint import load_checkpoint
from main.utils.config import plain
from main.utils.errors import UserError
from main.utils.image_io import to_uint8


@pytest.fixture(scope="module")
def stage_one(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("stage_one")
    return train_stage_one(tiny_train_config(run_dir, "trainer.max_steps=40", "trainer.val_check_interval=40"))


@pytest.fixture(scope="module")
def refiner(tmp_path_factory, stage_one):
    run_dir = tmp_path_factory.mktemp("refiner")
    return train(tiny_refiner_config(run_dir, stage_one, "trainer.max_steps=60", "trainer.val_check_interval=30"))


def val_losses(checkpoint_path) -> list[float]:
    import csv

    log = next(checkpoint_path.parent.parent.glob("logs/version_*/metrics.csv"))
    return [float(row["val/loss"]) for row in csv.DictReader(log.open()) if row.get("val/loss")]


def test_validation_loss_falls_from_the_zero_output_loss(refiner, stage_one, tmp_path):
    """The UNet's last conv starts at zero, so an untrained refiner's loss is the mean squared target (E[v^2] here, < 1
    since the images have |x| <= 1); training must beat it clearly and keep falling."""
    from main.datasets import build_datamodule

    fresh = build_system(tiny_refiner_config(tmp_path, stage_one))
    images, labels = next(iter(build_datamodule(fresh.hparams.data, batch_size=128).val_dataloader()))
    untrained = fresh.loss(fresh.ema.module, images, labels, generator=torch.Generator().manual_seed(0)).mean()
    assert 0.3 < untrained < 1.1
    losses = val_losses(refiner)
    assert len(losses) == 2 and losses[1] < losses[0] < 0.75 * untrained and losses[1] < 0.6 * untrained


def test_stage_one_is_frozen_and_travels_in_the_checkpoint(refiner, stage_one):
    system, checkpoint = load_stage_two(refiner)
    vae_system, _ = load_stage_one(stage_one)
    for name, tensor in vae_system.ema_vae.state_dict().items():
        assert torch.equal(system.stage_one.state_dict()[name], tensor), name
    assert not any(p.requires_grad for p in system.stage_one.parameters())
    hp = checkpoint["hyper_parameters"]
    assert hp["stage_one"]["checkpoint"].endswith("last.ckpt") and hp["stage_one"]["model"]["num_classes"] == 10
    assert checkpoint["stage"] == "ddpm" and hp["unet"]["num_classes"] == 10  # class_conditional: auto follows stage one
    system.train()
    assert not system.stage_one.training and system.unet.training


def test_the_preview_sampler_travels_in_the_checkpoint_and_older_ones_sample_with_the_defaults(refiner, tmp_path):
    checkpoint = load_checkpoint(refiner, StageTwoSystem.STAGE)
    assert checkpoint["hyper_parameters"]["preview_sampler"]["steps"] == 25  # train_ddpm.yaml's samples.sampler, a plain dict
    assert load_stage_two(refiner)[0].preview_sampler == SamplerConfig(steps=25)
    del checkpoint["hyper_parameters"]["preview_sampler"]  # as written before refiners carried it
    torch.save(checkpoint, tmp_path / "older.ckpt")
    system = load_stage_two(tmp_path / "older.ckpt")[0].eval()
    assert system.preview_sampler == SamplerConfig()
    images = system.sample_images(2, torch.Generator().manual_seed(0))
    _, refined = system.generate(2, {"steps": 50}, generator=torch.Generator().manual_seed(0))
    assert images.dtype == torch.uint8 and torch.equal(images, to_uint8(refined))


def test_ema_differs_from_the_trained_weights(refiner):
    system, _ = load_stage_two(refiner)
    pairs = zip(system.unet.parameters(), system.ema.module.parameters())
    assert any(not torch.equal(p, e) for p, e in pairs)


def test_conditioning_with_all_groups_is_closer_to_the_image_than_a_prior_sample(refiner):
    system, _ = load_stage_two(refiner)
    from main.datasets import build_datamodule

    test = build_datamodule(system.hparams.data, batch_size=64).split("test")
    x = torch.stack([test[i][0] for i in range(64)])
    labels = torch.tensor([test[i][1] for i in range(64)])
    target = x.float() / 127.5 - 1
    g = torch.Generator().manual_seed(0)
    errors = {k: (system.condition(x, labels, g, k=k) - target).pow(2).mean() for k in (0, "all")}
    assert errors["all"] < errors[0]


def test_k_in_pixels_counts_the_groups_up_to_that_resolution(refiner):
    system, _ = load_stage_two(refiner)
    vae = system.stage_one
    resolutions = [shape[-1] for shape in vae.latent_shapes(1)]
    assert vae.groups("4px") == sum(r <= 4 for r in resolutions) > 0
    assert vae.groups("1px") == resolutions.count(1)
    assert vae.groups(f"{max(resolutions)}px") == vae.groups("all") == len(resolutions)
    images = torch.zeros(2, 1, 8, 8, dtype=torch.uint8)
    pixels, groups = (system.condition(images, generator=torch.Generator().manual_seed(0), k=k) for k in ("4px", vae.groups("4px")))
    assert torch.equal(pixels, groups)


@pytest.mark.parametrize("k", [-1, 99, "some", "px"])
def test_bad_conditioning_k_is_a_clear_error(tmp_path, stage_one, k):
    with pytest.raises(UserError, match=r"conditioning.k=.*use 'all', an integer 0\.\.\d+ .* or '<R>px'"):
        build_system(tiny_refiner_config(tmp_path, stage_one, f"ddpm.conditioning.k={k}"))


def test_form2_and_v_prediction_train(tmp_path, stage_one):
    last = train(
        tiny_refiner_config(
            tmp_path,
            stage_one,
            "ddpm.diffusion.formulation=form2",
            "ddpm.diffusion.prediction=v",
            "trainer.max_steps=4",
            "trainer.val_check_interval=4",
        )
    )
    system, _ = load_stage_two(last)
    assert system.diffusion.formulation == "form2" and system.diffusion.prediction == "v"


def test_unconditional_baseline_needs_no_stage_one(tmp_path):
    last = train(
        tiny_refiner_config(
            tmp_path, None, "ddpm.diffusion.formulation=unconditional", "trainer.max_steps=4", "trainer.val_check_interval=4"
        )
    )
    system, _ = load_stage_two(last)
    assert system.stage_one is None and system.unet.in_channels == 1
    y, x = system.generate(3, {"name": "ddim", "steps": 3})
    assert y is None and x.shape == (3, 1, 8, 8)


def test_formulation_and_stage_one_must_agree(tmp_path, stage_one):
    with pytest.raises(UserError, match="formulation 'form1' needs stage-one checkpoint"):
        build_system(tiny_refiner_config(tmp_path, None))
    with pytest.raises(UserError, match="formulation 'unconditional' takes no stage-one checkpoint"):
        build_system(tiny_refiner_config(tmp_path, stage_one, "ddpm.diffusion.formulation=unconditional"))


def test_a_refiner_checkpoint_is_not_a_stage_one(tmp_path, refiner):
    with pytest.raises(UserError, match="is of stage 'ddpm', but this command needs a 'vae' checkpoint"):
        build_system(tiny_refiner_config(tmp_path, refiner))


def test_data_set_must_have_stage_ones_image_shape(tmp_path, stage_one):
    with pytest.raises(UserError, match=r"models 1x8x8 images but data set 'cifar10' has 3x32x32"):
        build_system(tiny_refiner_config(tmp_path, stage_one, "dataset=cifar10", "ddpm=digits"))


def refiner_arguments(cfg) -> dict:
    """StageTwoSystem's arguments of a refiner config other than its UNet and stage one."""
    ddpm = plain(cfg.ddpm)
    names = ("diffusion", "conditioning", "optim", "activation_checkpointing")
    return {"data": plain(cfg.dataset), **{name: ddpm[name] for name in names}}


def test_with_stage_one_copies_the_checkpoints_ema_weights_and_records_their_source(tmp_path, stage_one):
    from main.train_ddpm import refiner_unet_kwargs

    cfg, classes = tiny_refiner_config(tmp_path, stage_one), []

    def unet(vae_classes: int) -> dict:
        classes.append(vae_classes)
        return refiner_unet_kwargs(cfg, vae_classes)

    system = StageTwoSystem.with_stage_one(stage_one, unet=unet, **refiner_arguments(cfg))
    checkpoint = load_checkpoint(stage_one, "vae")
    ema = {name.removeprefix("ema.module."): t for name, t in checkpoint["state_dict"].items() if name.startswith("ema.module.")}
    copied = system.stage_one.state_dict()
    assert copied.keys() == ema.keys() and all(torch.equal(copied[name], ema[name]) for name in ema)
    assert classes == [10] and system.unet.num_classes == 10  # the UNet was sized for stage one's classes
    assert system.hparams.stage_one == {
        "checkpoint": str(stage_one.resolve()),
        "model": checkpoint["hyper_parameters"]["model"],
        "data": checkpoint["hyper_parameters"]["data"],
        "global_step": checkpoint["global_step"],
        "autoencoder": None,
    }


def test_with_stage_one_refuses_another_image_shape_in_one_line(tmp_path, stage_one):
    cfg = tiny_refiner_config(tmp_path, stage_one, "dataset=cifar10", "ddpm=digits")
    with pytest.raises(UserError) as refused:
        StageTwoSystem.with_stage_one(stage_one, unet=lambda n: pytest.fail("built a UNet"), **refiner_arguments(cfg))
    assert str(refused.value) == (
        f"stage one '{stage_one}' models 1x8x8 images but data set 'cifar10' has 3x32x32: use the data set stage one was trained on"
    )


def test_resume_continues_the_run(tmp_path, stage_one):
    cfg = tiny_refiner_config(tmp_path, stage_one, "trainer.max_steps=4", "trainer.val_check_interval=4")
    train(cfg)
    with pytest.raises(UserError, match="already holds checkpoints"):
        train(cfg)
    last = train(tiny_refiner_config(tmp_path, stage_one, "trainer.max_steps=8", "trainer.val_check_interval=4", "resume=true"))
    assert load_checkpoint(last, StageTwoSystem.STAGE)["global_step"] == 8


def test_training_grid_puts_each_stage_one_row_above_its_refinements():
    top, bottom = torch.zeros(10, 1, 2, 2), torch.ones(10, 1, 2, 2)
    rows = interleave_rows(top, bottom, per_row=4)
    assert rows.shape == (20, 1, 2, 2)
    assert rows[:4].eq(0).all() and rows[4:8].eq(1).all() and rows[8:12].eq(0).all() and rows[16:18].eq(0).all()


@pytest.mark.parametrize(
    ("dataset", "ddpm", "params"),
    [
        ("cifar10", "cifar10", 35_749_763),  # DiffuseVAE's CIFAR-10 refiner with attention at 16 px (as in their paper)
        ("cifar10", "cifar10_cpu", 1_114_819),  # their reduced UNet
        ("celeba64", "celeba64", 82_644_099),
        ("celebahq256", "celebahq256", 113_676_675),
    ],
)
def test_refiner_configs_build_diffusevaes_parameter_counts(dataset, ddpm, params):
    from helpers import compose_config

    from main.models.diffusion.unet import UNet
    from main.train_ddpm import refiner_unet_kwargs

    cfg = compose_config("train_ddpm", [f"dataset={dataset}", f"ddpm={ddpm}", "stage_one=null", "run_dir=/tmp/unused", "name=t"])
    with torch.device("meta"):  # counts without allocating the weights
        unet = UNet(**refiner_unet_kwargs(cfg))
    assert sum(p.numel() for p in unet.parameters()) == params


def test_mixed_precision_trains_on_the_cpu(tmp_path, stage_one):
    last = train(
        tiny_refiner_config(tmp_path, stage_one, "trainer.precision=bf16-mixed", "trainer.max_steps=3", "trainer.val_check_interval=3")
    )
    system, _ = load_stage_two(last)
    assert all(torch.isfinite(p).all() and p.dtype == torch.float32 for p in system.unet.parameters())
    assert val_losses(last)[-1] < 1.5


def test_a_nonfinite_stage_one_image_becomes_the_null_condition(tmp_path, stage_one, monkeypatch):
    """A stage one that overflows for one image must not put NaN into the refiner: that image trains unconditionally."""
    system = build_system(tiny_refiner_config(tmp_path, stage_one))
    original = StageTwoSystem.condition

    def overflowing(self, images, labels=None, generator=None, k=None):
        y = original(self, images, labels, generator, k)
        y[1] = float("nan")
        return y

    monkeypatch.setattr(StageTwoSystem, "condition", overflowing)
    images = torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8)
    loss = system.loss(system.unet, images, torch.zeros(4, dtype=torch.long)).mean()
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in system.unet.parameters() if p.grad is not None)
    assert int(system.nonfinite_conditions) == 1
