"""Stage one in latent space: the Gaussian output head, normalised and clipped latents, and classifier-free
guidance of the prior at every latent group."""

from __future__ import annotations

import pytest
import torch
from helpers import user_error
from test_vdvae_model import TINY, gen, tiny
from torch.distributions import Normal

from main.models.vdvae import HierarchicalVAE
from main.models.vdvae.decoder import GroupChoice
from main.models.vdvae.gaussian_likelihood import GaussianOutput


def latent_vae(seed=0, **overrides) -> HierarchicalVAE:
    return tiny(seed=seed, channels=4, likelihood="gaussian", pixel_mean=0.5, pixel_std=2.0, **overrides)


def latents(n=3, seed=0) -> torch.Tensor:
    return 0.5 + 2.0 * torch.randn(n, 4, 8, 8, generator=gen(seed))


def test_gaussian_head_log_prob_matches_torch_distributions():
    head = GaussianOutput(width=6, channels=4)
    params = head(torch.randn(2, 6, 5, 5, generator=gen(0)))
    x = torch.randn(2, 4, 5, 5, generator=gen(1))
    expected = Normal(params.mean, params.logstd.exp()).log_prob(x)
    torch.testing.assert_close(head.log_prob(params, x), expected)
    torch.testing.assert_close(head.nll_per_dim(params, x), -expected.flatten(1).mean(1))


def test_gaussian_head_samples_have_its_mean_and_std():
    head = GaussianOutput(width=2, channels=1)
    params = head(torch.randn(1, 2, 1, 1, generator=gen(0)).expand(20_000, 2, 1, 1))
    draws = head.sample(params, gen(1))
    assert draws.mean().item() == pytest.approx(params.mean[0].item(), abs=0.05)
    assert draws.std().item() == pytest.approx(params.logstd[0].exp().item(), rel=0.05)


def test_latent_model_scores_normalised_clipped_latents():
    model = latent_vae()
    x = latents()
    x[0, 0, 0, 0] = 100.0  # far outside: clipped to +4 after normalising
    target = model.targets(x)
    assert target.max().item() == 4.0
    torch.testing.assert_close(target[1], ((x[1] - 0.5) / 2.0).clamp(-4, 4))
    elbo = model(x)
    assert elbo.loss.shape == (3,) and torch.isfinite(elbo.loss).all()
    elbo.loss.mean().backward()
    assert model.likelihood.out_conv.weight.grad.abs().sum() > 0


def test_latent_model_samples_latents_not_images():
    model = latent_vae()
    z = model.sample(2, generator=gen(0))
    assert z.shape == (2, 4, 8, 8) and z.dtype == torch.float32
    torch.testing.assert_close(model.denormalise(torch.zeros(1)), torch.tensor([0.5]))
    assert "decode them" in user_error(model.to_uint8, z)


def test_unknown_likelihood_is_a_user_error():
    assert "unknown likelihood" in user_error(HierarchicalVAE, **TINY, channels=4, likelihood="laplace")


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
