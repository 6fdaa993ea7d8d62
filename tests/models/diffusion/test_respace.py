"""Respacing: chosen steps, the respaced tables, and that keeping every step changes nothing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from main.models.diffusion.gaussian_diffusion import GaussianDiffusion
from main.models.diffusion.respace import respace, respaced, space_timesteps
from main.models.diffusion.samplers import sample_loop
from main.models.diffusion.schedules import get_beta_schedule
from main.utils.errors import UserError

T = 100


@pytest.mark.parametrize("spacing", ["uniform", "quadratic", "logsnr"])
@pytest.mark.parametrize("n", [1, 2, 7, 50, 99, 100])
def test_space_timesteps_properties(spacing, n):
    abar = np.cumprod(1 - get_beta_schedule("linear", T))
    steps = space_timesteps(T, n, spacing, abar)
    assert len(steps) == n and np.all(np.diff(steps) > 0)
    assert steps[-1] == T - 1 and (n == 1 or steps[0] == 0)


def test_quadratic_is_dense_near_zero():
    steps = space_timesteps(1000, 10, "quadratic")
    assert np.all(np.diff(np.diff(steps)) >= 0)
    np.testing.assert_array_equal(space_timesteps(1000, 4, "uniform"), [0, 333, 666, 999])


def test_respaced_tables_match_base_at_kept_steps():
    base = GaussianDiffusion(get_beta_schedule("cosine", T), "form2", "v")
    keep = [0, 4, 30, 31, 99]
    d = respace(base, keep)
    np.testing.assert_allclose(d.alphas_cumprod, base.alphas_cumprod[keep], rtol=1e-9)
    np.testing.assert_array_equal(d.timestep_map, keep)
    assert d.formulation is base.formulation and d.prediction is base.prediction
    # respacing twice composes the maps
    np.testing.assert_array_equal(respace(d, [1, 4]).timestep_map, [4, 99])
    torch.testing.assert_close(d.map_timesteps(torch.tensor([0, 2, 4])), torch.tensor([0, 30, 99]))


@pytest.mark.parametrize("sampler,kw", [("ddpm", {"variance": "fixed_large"}), ("ddim", {"eta": 0.5}), ("dpm_solver++", {})])
def test_all_timesteps_equals_base(sampler, kw):
    base = GaussianDiffusion(get_beta_schedule("linear", T), "form1")
    same = respaced(base, T, "uniform")
    np.testing.assert_allclose(same.betas, base.betas, rtol=1e-10)
    np.testing.assert_array_equal(same.timestep_map, np.arange(T))
    g = torch.Generator().manual_seed(0)
    y = torch.randn(2, 3, 4, 4, generator=g)
    w = torch.randn(3, 6, generator=g)
    model = lambda x_in, t: 0.2 * torch.einsum("oc,nchw->nohw", w, x_in) + 1e-3 * t.float().reshape(-1, 1, 1, 1)
    outs = [sample_loop(d, model, y=y, sampler=sampler, generator=torch.Generator().manual_seed(5), **kw) for d in (base, same)]
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-5)


def test_respace_errors():
    base = GaussianDiffusion(get_beta_schedule("linear", T))
    with pytest.raises(UserError):
        respaced(base, 0)
    with pytest.raises(UserError):
        respaced(base, T + 1)
    with pytest.raises(UserError, match="uniform"):
        respaced(base, 10, "cubic")
    with pytest.raises(UserError):
        respace(base, [5, T])
