"""Activation checkpointing (main/models/checkpointing.py) in the VAE and the refiner UNet: the same loss and
gradients as the plain forward pass, random draws (latent samples, dropout) included; far fewer activations kept;
inactive in evaluation mode; and the config settings vae.activation_checkpointing / ddpm.activation_checkpointing
train to the same weights."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_refiner_config, tiny_train_config

from main.models.diffusion.unet import UNet
from main.models.vdvae import HierarchicalVAE
from main.models.vdvae.decoder import GroupChoice
from main.systems.stage_one import load_stage_one
from main.systems.stage_two import load_stage_two
from main.train_ae import train as train_stage_one
from main.train_ddpm import train as train_refiner

TINY_VAE = dict(
    image_size=8, channels=3, width=16, zdim=4, num_mixtures=2, num_classes=3,
    enc_blocks="8x2,8d2,4x1,4d4,1x1", dec_blocks="1x1,4m1,4x1,8m4,8x2",
)  # fmt: skip
TINY_UNET = dict(
    image_size=16, in_channels=6, out_channels=3, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
    attention_resolutions=(8,), num_heads=2, dropout=0.3, num_classes=3,
)  # fmt: skip
IMAGES = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
LABELS = torch.tensor([0, 2, -1, 1])
NOISY = torch.randn(4, 6, 16, 16, generator=torch.Generator().manual_seed(1))
TARGET = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(2))
STEPS = torch.tensor([1, 50, 300, 999])


def plain_and_checkpointed(cls, kwargs: dict) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Two training-mode models with the same (perturbed: zero-initialised parts active) weights, without and with checkpointing."""
    plain = cls(**kwargs)
    with torch.no_grad():
        for p in plain.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    checkpointed = cls(**kwargs, activation_checkpointing=True)
    checkpointed.load_state_dict(plain.state_dict())
    return plain.train(), checkpointed.train()


def vae_loss(model: HierarchicalVAE) -> torch.Tensor:
    """The training loss: the negative ELBO, every latent group drawn from its posterior."""
    return model(IMAGES, LABELS).loss.mean()


def unet_loss(model: UNet) -> torch.Tensor:
    return (model(NOISY, STEPS, LABELS.clamp(min=0)) - TARGET).pow(2).mean()


CASES = {"vae": (HierarchicalVAE, TINY_VAE, vae_loss), "unet": (UNet, TINY_UNET, unet_loss)}


def loss_and_grads(model: torch.nn.Module, loss_fn, seed: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    loss = loss_fn(model)
    loss.backward()
    return loss.detach(), {name: p.grad for name, p in model.named_parameters()}


@pytest.mark.parametrize("case", CASES)
def test_gradients_are_those_of_the_plain_forward_pass(case):
    """The recomputation repeats the random draws (latent samples, dropout), so loss and every gradient agree."""
    cls, kwargs, loss_fn = CASES[case]
    plain, checkpointed = plain_and_checkpointed(cls, kwargs)
    loss, grads = loss_and_grads(plain, loss_fn, seed=1)
    other_seed, _ = loss_and_grads(plain, loss_fn, seed=2)
    assert not torch.equal(loss, other_seed)  # the draws matter: equal gradients need the same draws in the recomputation
    checkpointed_loss, checkpointed_grads = loss_and_grads(checkpointed, loss_fn, seed=1)
    torch.testing.assert_close(checkpointed_loss, loss, rtol=0, atol=0)
    assert all(grad is not None for grad in grads.values())
    for name, grad in grads.items():
        torch.testing.assert_close(checkpointed_grads[name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_decoder_draws_from_an_explicit_generator_are_not_checkpointed():
    """torch restores only the default generators for the recomputation: with an explicit one the decoder keeps its
    activations, so the gradients stay exact."""
    plain, checkpointed = plain_and_checkpointed(HierarchicalVAE, TINY_VAE)
    grads = []
    for model in (plain, checkpointed):
        activations = model.encoder(IMAGES.float() / 127.5 - 1)
        choices = [GroupChoice(True) for _ in range(model.num_groups)]
        features, _, kls = model.decoder(choices, len(IMAGES), activations, LABELS, generator=torch.Generator().manual_seed(3))
        (features.square().mean() + sum(kl.mean() for kl in kls)).backward()
        grads.append([p.grad for p in model.decoder.parameters()])
    for checkpointed_grad, grad in zip(*reversed(grads)):
        torch.testing.assert_close(checkpointed_grad, grad, rtol=1e-5, atol=1e-7)


def saved_mib(model: torch.nn.Module, loss_fn) -> float:
    """MiB of the tensors autograd keeps for the backward pass (checkpointed blocks: only their inputs)."""
    storages = {}

    def pack(tensor):
        storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    torch.manual_seed(0)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss_fn(model)
    return sum(storages.values()) / 2**20


@pytest.mark.parametrize("case", CASES)
def test_checkpointing_keeps_far_fewer_activations_and_only_in_training(case):
    cls, kwargs, loss_fn = CASES[case]
    plain, checkpointed = plain_and_checkpointed(cls, kwargs)
    assert saved_mib(checkpointed, loss_fn) < 0.5 * saved_mib(plain, loss_fn)
    plain.eval()
    checkpointed.eval()
    assert saved_mib(checkpointed, loss_fn) == saved_mib(plain, loss_fn)


TRAINING = ["trainer.max_steps=3", "trainer.val_check_interval=3", "trainer.num_sanity_val_steps=0", "plots.training_curves=false"]


def trained_weights(tmp_path, stage: str, checkpointing: bool) -> torch.nn.Module:
    setting, run_dir = f"activation_checkpointing={str(checkpointing).lower()}", tmp_path / str(checkpointing)
    if stage == "vae":
        system, _ = load_stage_one(train_stage_one(tiny_train_config(run_dir, *TRAINING, f"vae.{setting}")))
        assert system.vae.encoder.activation_checkpointing is system.vae.decoder.activation_checkpointing is checkpointing
        return system.vae
    cfg = tiny_refiner_config(run_dir, None, *TRAINING, "ddpm.diffusion.formulation=unconditional", f"ddpm.{setting}")
    system, _ = load_stage_two(train_refiner(cfg))
    assert system.unet.activation_checkpointing is checkpointing
    return system.unet


@pytest.mark.parametrize("stage", ["vae", "ddpm"])
def test_the_config_setting_trains_to_the_same_weights(tmp_path, stage):
    plain = trained_weights(tmp_path, stage, False).state_dict()
    checkpointed = trained_weights(tmp_path, stage, True).state_dict()
    for name, weight in plain.items():
        torch.testing.assert_close(checkpointed[name], weight, rtol=1e-4, atol=1e-6, msg=name)
