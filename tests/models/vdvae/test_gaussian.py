"""Diagonal Gaussian KL and sampling, checked against torch.distributions and sample statistics."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from main.models.vdvae.gaussian import gaussian_kl, gaussian_log_ratio, gaussian_sample


def random_gaussians(seed, shape=(4, 5, 3, 3)):
    g = torch.Generator().manual_seed(seed)
    mean_q, mean_p = (torch.randn(shape, generator=g, dtype=torch.float64) * 2 for _ in range(2))
    logstd_q, logstd_p = (torch.rand(shape, generator=g, dtype=torch.float64) * 4 - 2 for _ in range(2))
    return mean_q, logstd_q, mean_p, logstd_p


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kl_matches_torch_distributions(seed):
    """gaussian_kl(q, p) equals kl_divergence(Normal(q), Normal(p)) elementwise."""
    mean_q, logstd_q, mean_p, logstd_p = random_gaussians(seed)
    expected = kl_divergence(Normal(mean_q, logstd_q.exp()), Normal(mean_p, logstd_p.exp()))
    got = gaussian_kl(mean_q, logstd_q, mean_p, logstd_p)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


def test_kl_is_asymmetric_in_the_right_direction():
    """The first pair is q (the posterior), the second p (the prior): KL(N(0,1) || N(0,e^2)) != KL(N(0,e^2) || N(0,1))."""
    zero, one = torch.zeros(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64)
    got = gaussian_kl(zero, zero, zero, one)
    expected = kl_divergence(Normal(zero, one), Normal(zero, one * math.e))
    assert float(got) == pytest.approx(float(expected), rel=1e-12)
    assert float(got) != pytest.approx(float(gaussian_kl(zero, one, zero, zero)), rel=1e-3)


def test_kl_of_a_distribution_with_itself_is_zero():
    """KL(q || q) = 0, and KL > 0 otherwise."""
    mean_q, logstd_q, mean_p, logstd_p = random_gaussians(3)
    torch.testing.assert_close(gaussian_kl(mean_q, logstd_q, mean_q, logstd_q), torch.zeros_like(mean_q), atol=1e-12, rtol=0)
    assert (gaussian_kl(mean_q, logstd_q, mean_p, logstd_p) > 0).all()


def test_sample_at_temperature_zero_is_the_mean():
    mean_q, logstd_q, _, _ = random_gaussians(4)
    torch.testing.assert_close(gaussian_sample(mean_q, logstd_q, temperature=0.0), mean_q, atol=0, rtol=0)


@pytest.mark.parametrize("t", [0.3, 1.0, 2.5])
def test_sample_with_fixed_noise_is_mean_plus_scaled_noise(t):
    """With noise eps given, the sample is mean + t * exp(logstd) * eps."""
    mean_q, logstd_q, eps, _ = random_gaussians(5)
    got = gaussian_sample(mean_q, logstd_q, temperature=t, noise=eps)
    torch.testing.assert_close(got, mean_q + t * logstd_q.exp() * eps, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("t", [0.5, 1.0])
def test_sample_statistics(t):
    """Over 20000 draws per element, the empirical mean is the mean and the std is t * exp(logstd)."""
    mean = torch.tensor([[-1.0, 0.5, 3.0]], dtype=torch.float64)
    logstd = torch.tensor([[-1.0, 0.0, 0.7]], dtype=torch.float64)
    n = 20000
    draws = gaussian_sample(mean.expand(n, -1), logstd.expand(n, -1), temperature=t, generator=torch.Generator().manual_seed(0))
    std = t * logstd.exp()[0]
    torch.testing.assert_close(draws.mean(0), mean[0], atol=float(4 * std.max() / math.sqrt(n)), rtol=0)
    torch.testing.assert_close(draws.std(0), std, rtol=0.03, atol=0)


def test_sampling_is_reproducible_with_a_generator():
    mean_q, logstd_q, _, _ = random_gaussians(6)
    a = gaussian_sample(mean_q, logstd_q, generator=torch.Generator().manual_seed(1))
    b = gaussian_sample(mean_q, logstd_q, generator=torch.Generator().manual_seed(1))
    c = gaussian_sample(mean_q, logstd_q, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.dtype == mean_q.dtype


@pytest.mark.parametrize("seed", [0, 1])
def test_log_ratio_matches_torch_distributions(seed):
    """gaussian_log_ratio(z, q, p) equals Normal(q).log_prob(z) - Normal(p).log_prob(z) elementwise."""
    mean_q, logstd_q, mean_p, logstd_p = random_gaussians(seed)
    z = torch.randn(mean_q.shape, generator=torch.Generator().manual_seed(seed + 10), dtype=torch.float64) * 3
    expected = Normal(mean_q, logstd_q.exp()).log_prob(z) - Normal(mean_p, logstd_p.exp()).log_prob(z)
    torch.testing.assert_close(gaussian_log_ratio(z, mean_q, logstd_q, mean_p, logstd_p), expected, rtol=1e-10, atol=1e-10)


def test_log_ratio_at_posterior_draws_averages_to_the_kl():
    """E_q[log q(z) - log p(z)] = KL(q || p): the sampled estimate is unbiased."""
    mean_q, logstd_q, mean_p, logstd_p = (t[:1, :1, :1, :1].expand(200_000, 1, 1, 1) for t in random_gaussians(3))
    z = gaussian_sample(mean_q, logstd_q, generator=torch.Generator().manual_seed(0))
    estimate = gaussian_log_ratio(z, mean_q, logstd_q, mean_p, logstd_p)
    kl = gaussian_kl(mean_q[0], logstd_q[0], mean_p[0], logstd_p[0]).item()
    assert abs(estimate.mean().item() - kl) < 4 * estimate.std().item() / math.sqrt(len(estimate)) + 1e-9
