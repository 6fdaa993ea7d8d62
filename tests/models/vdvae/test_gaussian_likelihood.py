"""The Gaussian output head of stage one in latent space, against torch.distributions and sample statistics."""

from __future__ import annotations

import pytest
import torch
from test_vae import gen
from torch.distributions import Normal

from main.models.vdvae.gaussian_likelihood import GaussianOutput


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
