"""The top-down decoder, through tiny HierarchicalVAEs: fixed latents, class conditioning (the null label, per-block
label embeddings) and classifier-free guidance of the prior at every latent group."""

from __future__ import annotations

import pytest
import torch
from helpers import user_error
from test_vae import count, gen, images, tiny

from main.models.vdvae import HierarchicalVAE
from main.models.vdvae.decoder import GroupChoice


def test_fixed_latents_replace_the_draw():
    """GroupChoice.latent is decoded as given, in posterior and prior groups alike."""
    from main.models.vdvae.decoder import GroupChoice

    model, x = tiny(), images(2)
    latents = [torch.randn(shape, generator=gen(i)) for i, shape in enumerate(model.latent_shapes(2))]
    activations = model.encoder(model._encoder_input(x))
    with torch.no_grad():
        for k in (0, 2):
            choices = [GroupChoice(i < k, latent=z) for i, z in enumerate(latents)]
            _, zs, _ = model.decoder(choices, 2, activations)
            assert all(torch.equal(z, fixed) for z, fixed in zip(zs, latents))


# ---- class conditioning ---------------------------------------------------------------------------------------------------
def test_label_minus_one_is_the_null_label():
    """Labels -1 and no labels give identical samples, reconstructions and ELBOs."""
    model = tiny(num_classes=3)
    none = torch.full((2,), -1)
    assert torch.equal(model.sample(2, labels=none, generator=gen(1)), model.sample(2, labels=None, generator=gen(1)))
    x = images(2)
    assert torch.equal(model.reconstruct(x, labels=none, k=2, generator=gen(1)), model.reconstruct(x, k=2, generator=gen(1)))
    with torch.no_grad():
        torch.manual_seed(0)  # forward() samples z from the global generator
        with_minus_one = model(x, none).loss
        torch.manual_seed(0)
        assert torch.equal(with_minus_one, model(x).loss)
        torch.manual_seed(0)
        assert not torch.equal(with_minus_one, model(x, torch.tensor([0, 1])).loss)


def test_different_labels_give_different_outputs():
    """Once label embeddings are non-zero, each label (and the null label) changes the deterministic output."""
    model = tiny(num_classes=3)
    with torch.no_grad():
        for block in model.decoder.blocks:
            block.label_embedding.weight.normal_()
    outs = [model.sample(1, labels=torch.tensor([c]), temperature=0.0, output="mean") for c in (0, 1, 2, -1)]
    for i in range(4):
        for j in range(i):
            assert not torch.allclose(outs[i], outs[j])
    # labels act per image of the batch
    both = model.sample(2, labels=torch.tensor([0, 1]), temperature=0.0, output="mean")
    torch.testing.assert_close(both, torch.cat(outs[:2]))


def test_unconditional_model_has_no_label_embeddings():
    model = tiny(perturb=False)
    assert all(b.label_embedding is None for b in model.decoder.blocks)
    assert count(tiny(perturb=False, num_classes=3)) == count(model) + 4 * 16 * model.num_groups


# ---- classifier-free guidance -----------------------------------------------------------------------------------------
def conditional(seed=0) -> HierarchicalVAE:
    return tiny(seed=seed, num_classes=3)


def test_zero_guidance_is_unguided_sampling_exactly():
    model = conditional()
    labels = torch.tensor([0, 1, 2])
    unguided = model.sample(3, labels, generator=gen(4), output="mean")
    assert torch.equal(model.sample(3, labels, generator=gen(4), output="mean", guidance=(0.0, 0.0)), unguided)
    assert not torch.allclose(model.sample(3, labels, generator=gen(4), output="mean", guidance=(1.5, 3.0)), unguided)


def top_latent(model, labels, guidance=None) -> torch.Tensor:
    """The first group's z at temperature 0: its prior mean (guided or not)."""
    choices = [GroupChoice(False, temperature=0.0) for _ in range(model.num_groups)]
    with torch.no_grad():
        _, zs, _ = model.decoder(choices, len(labels), None, labels, guidance=guidance)
    return zs[0]


@pytest.mark.parametrize("weight", [1.5, -0.5])
def test_guided_prior_mean_extrapolates_from_the_unconditional_mean(weight):
    """Group 1's guided prior mean is m_c + w (m_c - m_u), with m_c, m_u from separate conditional and null-label runs."""
    model = conditional()
    labels = torch.tensor([0, 2])
    m_c, m_u = top_latent(model, labels), top_latent(model, torch.tensor([-1, -1]))
    assert not torch.allclose(m_c, m_u)
    torch.testing.assert_close(top_latent(model, labels, (weight, 0.0)), m_c + weight * (m_c - m_u))


def test_guided_prior_variance_follows_the_variance_weight():
    """At temperature 1 with fixed noise, z - mean scales with the guided std s_c * (s_c / s_u)^w_v."""
    model = conditional(seed=2)
    labels = torch.tensor([1])
    shape = model.latent_shapes(1)[0]
    eps = torch.randn(shape, generator=gen(0))

    def first_z(label, guidance):
        choices = [GroupChoice(False, 1.0, eps if i == 0 else None) for i in range(model.num_groups)]
        with torch.no_grad():
            return model.decoder(choices, 1, None, label, gen(1), guidance=guidance)[1][0]

    std_c = (first_z(labels, None) - top_latent(model, labels)) / eps
    std_u = (first_z(torch.tensor([-1]), None) - top_latent(model, torch.tensor([-1]))) / eps
    guided = first_z(labels, (0.0, 2.0)) - top_latent(model, labels, (0.0, 2.0))
    torch.testing.assert_close(guided, eps * std_c * (std_c / std_u) ** 2, rtol=1e-4, atol=1e-5)


def test_guidance_needs_a_class_conditional_model():
    model = tiny()
    assert "class-conditional" in user_error(model.sample, 2, guidance=(1.0, 0.0))
