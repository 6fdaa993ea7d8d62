"""Forward process and posteriors of GaussianDiffusion, against closed forms and independent computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from main.models.diffusion.gaussian_diffusion import GaussianDiffusion
from main.models.diffusion.schedules import get_beta_schedule
from main.utils.errors import UserError

T = 100
SHAPE = (2, 3, 4, 4)


def make(form, pred="eps", schedule="linear"):
    return GaussianDiffusion(get_beta_schedule(schedule, T), form, pred)


def data(seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(SHAPE, generator=g, dtype=dtype) * 2 - 1
    y = x0 + 0.5 * torch.randn(SHAPE, generator=g, dtype=dtype)
    return x0, y


@pytest.mark.parametrize("form", ["form1", "form2", "unconditional"])
def test_q_sample_statistics(form):
    """Empirical mean/var of q_sample over many draws match sqrt(abar) x0 + shift and 1 - abar."""
    d = make(form)
    x0, y = data()
    x0, y = x0[:1], y[:1]
    y = None if form == "unconditional" else y
    n = 20000
    t_idx = 37
    abar = np.cumprod(1 - get_beta_schedule("linear", T))[t_idx]
    torch.manual_seed(0)
    xs = d.q_sample(x0.expand(n, *SHAPE[1:]), torch.full((n,), t_idx), None if y is None else y.expand(n, *SHAPE[1:]))
    expected_mean = np.sqrt(abar) * x0[0] + (y[0] if form == "form2" else 0)
    stderr = np.sqrt((1 - abar) / n)
    assert (xs.mean(0) - expected_mean).abs().max() < 5 * stderr
    assert (xs.var(0) - (1 - abar)).abs().max() < 5 * (1 - abar) * np.sqrt(2 / n)


def test_form2_forward_mean_is_shifted_by_y():
    x0, y = data()
    t = torch.tensor([0, 50])
    abar = torch.from_numpy(np.cumprod(1 - get_beta_schedule("linear", T)))[t].reshape(-1, 1, 1, 1)
    mean, var, _ = make("form2").q_mean_variance(x0, t, y)
    torch.testing.assert_close(mean, abar.sqrt() * x0 + y)
    torch.testing.assert_close(make("form2").q_sample(x0, t, y, noise=torch.zeros_like(x0)), abar.sqrt() * x0 + y)
    mean1, _, _ = make("form1").q_mean_variance(x0, t, y)
    torch.testing.assert_close(mean1, abar.sqrt() * x0)


@pytest.mark.parametrize("form", ["form1", "form2", "unconditional"])
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_posterior_equals_gaussian_conditioning(form, schedule):
    """q(x_{t-1} | x_t, x_0, y) from conditioning the joint Gaussian of (x_{t-1}, x_t) given x_0 (and y).

    The joint comes from the process definition: x_{t-1} ~ N(sqrt(abar_{t-1}) x0 + s, 1 - abar_{t-1}) and
    x_t = sqrt(alpha_t) (x_{t-1} - s) + s + sqrt(beta_t) e, with s = y for form2 and 0 otherwise.
    """
    d = make(form, schedule=schedule)
    x0, y = data(1)
    g = torch.Generator().manual_seed(2)
    x_t = torch.randn(SHAPE, generator=g, dtype=torch.float64)
    s = y if form == "form2" else torch.zeros_like(x0)
    y_arg = None if form == "unconditional" else y
    betas = torch.tensor(get_beta_schedule(schedule, T), dtype=torch.float64)
    for t_idx in [0, 1, 5, 50, T - 1]:
        abar_prev = torch.prod(1 - betas[:t_idx])  # empty product = 1
        alpha = 1 - betas[t_idx]
        m1, m2 = abar_prev.sqrt() * x0 + s, (alpha * abar_prev).sqrt() * x0 + s
        v1 = 1 - abar_prev
        cov = alpha.sqrt() * v1
        v2 = alpha * v1 + betas[t_idx]
        want_mean, want_var = m1 + cov / v2 * (x_t - m2), v1 - cov**2 / v2
        t = torch.full((SHAPE[0],), t_idx)
        mean, var, log_var = d.q_posterior_mean_variance(x0, x_t, t, y_arg)
        torch.testing.assert_close(mean, want_mean, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(var.expand(SHAPE), want_var.expand(SHAPE), rtol=1e-10, atol=1e-12)
        if t_idx > 0:
            torch.testing.assert_close(log_var.exp().expand(SHAPE), want_var.expand(SHAPE), rtol=1e-10, atol=0)


@pytest.mark.parametrize("form", ["form1", "form2", "unconditional"])
@pytest.mark.parametrize("pred", ["eps", "v"])
def test_conversions_round_trip(form, pred):
    d = make(form, pred)
    x0, y = data(3)
    y = None if form == "unconditional" else y
    eps = torch.randn(SHAPE, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    t = torch.tensor([3, 80])
    x_t = d.q_sample(x0, t, y, eps)
    torch.testing.assert_close(d.predict_xstart_from_eps(x_t, t, eps, y), x0)
    torch.testing.assert_close(d.predict_eps_from_xstart(x_t, t, x0, y), eps)
    target = d.training_target(x0, eps, t)
    got_x0, got_eps = d.output_to_xstart_eps(target, x_t, t, y)
    torch.testing.assert_close(got_x0, x0)
    torch.testing.assert_close(got_eps, eps)


def test_v_definition():
    d = make("form1", "v")
    x0, _ = data()
    eps = torch.ones(SHAPE, dtype=torch.float64)
    t = torch.tensor([10, 10])
    abar = np.cumprod(1 - get_beta_schedule("linear", T))[10]
    torch.testing.assert_close(d.training_target(x0, eps, t), np.sqrt(abar) * eps - np.sqrt(1 - abar) * x0)


def test_p_mean_variance_uses_posterior_at_predicted_x0():
    d = make("form2")
    x0, y = data(5)
    t = torch.tensor([20, 60])
    x_t = d.q_sample(x0, t, y)
    oracle = lambda x_in, tt: d.predict_eps_from_xstart(x_in[:, :3], tt, x0, y)
    for variance, table in [("fixed_small", d.posterior_variance), ("fixed_large", d.betas)]:
        out = d.p_mean_variance(oracle, x_t, t, y, variance=variance)
        mean, _, _ = d.q_posterior_mean_variance(x0, x_t, t, y)
        torch.testing.assert_close(out["mean"], mean)
        torch.testing.assert_close(out["variance"].flatten(), torch.from_numpy(table[t.numpy()]))


def test_bad_names_are_user_errors():
    betas = get_beta_schedule("linear", 50)
    with pytest.raises(UserError, match="form1"):
        GaussianDiffusion(betas, "form3")
    with pytest.raises(UserError, match="'eps', 'v'"):
        GaussianDiffusion(betas, "form1", "x0")
    with pytest.raises(UserError):
        GaussianDiffusion(np.append(betas, 1.0))
    d = GaussianDiffusion(betas)
    x = torch.zeros(1, 1, 2, 2)
    with pytest.raises(UserError, match="fixed_large"):
        d.p_variance("learned", torch.tensor([0]), x)
