"""Beta schedules: valid betas, monotone, the right end points, and name validation."""

from __future__ import annotations

import numpy as np
import pytest

from main.models.diffusion.schedules import BetaSchedule, get_beta_schedule
from main.utils.errors import UserError


@pytest.mark.parametrize("name", ["linear", "cosine", BetaSchedule.COSINE])
@pytest.mark.parametrize("T", [21, 100, 1000, 4000])
def test_betas_valid_and_monotone(name, T):
    betas = get_beta_schedule(name, T)
    assert betas.shape == (T,) and betas.dtype == np.float64
    assert np.all(betas > 0) and np.all(betas < 1)
    assert np.all(np.diff(betas) >= 0), "betas should not decrease over t"


def test_linear_endpoints_scale_with_T():
    np.testing.assert_allclose(get_beta_schedule("linear", 1000)[[0, -1]], [1e-4, 0.02])
    np.testing.assert_allclose(get_beta_schedule("linear", 250)[[0, -1]], [4e-4, 0.08])
    # abar_T stays comparable across T thanks to the rescaling
    for T in (250, 1000, 4000):
        assert np.prod(1 - get_beta_schedule("linear", T)) < 1e-4


def test_cosine_alphas_cumprod():
    T = 1000
    abar = np.cumprod(1 - get_beta_schedule("cosine", T))
    assert abar[-1] < 1e-4, "cosine abar_T should be near 0"
    assert abar[0] > 0.9999
    # matches the analytic curve f(t)/f(0) away from the clipped end
    t = np.arange(1, T + 1) / T
    f = np.cos((t + 0.008) / 1.008 * np.pi / 2) ** 2 / np.cos(0.008 / 1.008 * np.pi / 2) ** 2
    np.testing.assert_allclose(abar[: T - 10], f[: T - 10], rtol=1e-9)


@pytest.mark.parametrize("name", ["quadratic", "Linear ", ""])
def test_bad_name_is_user_error(name):
    with pytest.raises(UserError, match="linear, cosine"):
        get_beta_schedule(name, 100)


@pytest.mark.parametrize("T", [0, -3, 2.5])
def test_bad_num_timesteps_is_user_error(T):
    with pytest.raises(UserError):
        get_beta_schedule("linear", T)


def test_short_linear_schedule_is_user_error_but_cosine_works():
    with pytest.raises(UserError, match="cosine"):
        get_beta_schedule("linear", 20)
    betas = get_beta_schedule("cosine", 10)
    assert np.all((betas > 0) & (betas < 1))
