"""Samplers: an exact ("oracle") denoiser must give back x_0; determinism; trajectories; DPM-Solver++ order."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from main.models.diffusion.gaussian_diffusion import GaussianDiffusion
from main.models.diffusion.respace import respaced
from main.models.diffusion.samplers import sample_loop, sample_loop_progressive
from main.models.diffusion.schedules import get_beta_schedule
from main.utils.errors import UserError

T = 200
SHAPE = (3, 3, 4, 4)
SAMPLERS = [
    ("ddpm", {"variance": "fixed_large"}),
    ("ddpm", {"variance": "fixed_small"}),
    ("ddim", {"eta": 0.0}),
    ("ddim", {"eta": 1.0}),
    ("dpm_solver++", {}),
]


def problem(form, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(SHAPE, generator=g, dtype=torch.float64) * 1.8 - 0.9
    y = None if form == "unconditional" else x0 + 0.3 * torch.randn(SHAPE, generator=g, dtype=torch.float64)
    return x0, y


def make_oracle(form, pred, x0, y, schedule="linear"):
    """Knows x_0; written from the definitions with its own abar table, indexed by the step the network receives
    (so a wrong respacing timestep map or a wrong form2 shift makes it lie)."""
    abar = torch.from_numpy(np.cumprod(1 - get_beta_schedule(schedule, T)))
    shift = y if form == "form2" else 0.0

    def oracle(x_in, t):
        assert x_in.shape[1] == (3 if form == "unconditional" else 6)
        if form != "unconditional":
            torch.testing.assert_close(x_in[:, 3:], y)
        a = abar[t].reshape(-1, 1, 1, 1)
        eps = (x_in[:, :3] - shift - a.sqrt() * x0) / (1 - a).sqrt()
        return eps if pred == "eps" else a.sqrt() * eps - (1 - a).sqrt() * x0

    return oracle


def diffusions(form, pred):
    base = GaussianDiffusion(get_beta_schedule("linear", T), form, pred)
    return {
        "full": base,
        "uniform": respaced(base, 25, "uniform"),
        "quadratic": respaced(base, 25, "quadratic"),
        "logsnr": respaced(base, 25, "logsnr"),
        "one step": respaced(base, 1),  # x_T -> x_0 at once
    }


@pytest.mark.parametrize("form", ["form1", "form2", "unconditional"])
@pytest.mark.parametrize("pred", ["eps", "v"])
@pytest.mark.parametrize("sampler,kw", SAMPLERS)
def test_oracle_recovers_x0(form, pred, sampler, kw):
    x0, y = problem(form)
    oracle = make_oracle(form, pred, x0, y)
    for name, d in diffusions(form, pred).items():
        # float64 noise: one step divides x_T by sqrt(abar_T) ~ 0.005, which float32 noise's rounding would not survive
        out = sample_loop(d, oracle, SHAPE, y, sampler=sampler, generator=torch.Generator().manual_seed(1), dtype=torch.float64, **kw)
        torch.testing.assert_close(out, x0, rtol=0, atol=1e-6, msg=f"{name} {sampler} {kw}")


@pytest.mark.parametrize("form", ["form1", "form2"])
@pytest.mark.parametrize("sampler,kw", SAMPLERS)
def test_truncated_start_recovers_x0_and_runs_start_step_steps(form, sampler, kw):
    x0, y = problem(form, seed=3)
    d = respaced(GaussianDiffusion(get_beta_schedule("linear", T), form), 40)
    steps = list(sample_loop_progressive(d, make_oracle(form, "eps", x0, y), SHAPE, y, sampler=sampler, start_step=10, **kw))
    assert [int(s["t"][0]) for s in steps] == list(range(9, -1, -1))
    out = sample_loop(d, make_oracle(form, "eps", x0, y), SHAPE, y, sampler=sampler, start_step=10, **kw)
    torch.testing.assert_close(out, x0, rtol=0, atol=1e-6)


def test_truncated_start_begins_at_y_noised_to_t0():
    form = "form2"
    x0, y = problem(form, seed=4)
    d = GaussianDiffusion(get_beta_schedule("linear", T), form)
    noise = torch.randn(SHAPE, dtype=torch.float64)
    seen = []

    def spy(x_in, t):
        seen.append((x_in[:, :3].clone(), t.clone()))
        return torch.zeros_like(x_in[:, :3])

    sample_loop(d, spy, SHAPE, y, sampler="ddim", start_step=30, noise=noise, temperature=0.5)
    x_first, t_first = seen[0]
    assert len(seen) == 30 and int(t_first[0]) == 29
    abar = np.cumprod(1 - get_beta_schedule("linear", T))[29]
    torch.testing.assert_close(x_first, np.sqrt(abar) * y + y + np.sqrt(1 - abar) * 0.5 * noise)


@pytest.mark.parametrize("form", ["form1", "form2"])
@pytest.mark.parametrize("sampler", ["ddim", "dpm_solver++"])
def test_deterministic_trajectory_stays_on_marginal(form, sampler):
    """With the oracle, DDIM(eta=0) and DPM-Solver++ keep x_s = sqrt(abar_s) x0 + shift + sqrt(1 - abar_s) eps*,
    where eps* is the initial noise: checks every intermediate state, not only the last."""
    x0, y = problem(form, seed=5)
    d = respaced(GaussianDiffusion(get_beta_schedule("linear", T), form), 30, "quadratic")
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    shift = y if form == "form2" else 0.0
    x_T = noise + shift
    abar_T = d.alphas_cumprod[-1]
    eps_star = (x_T - shift - np.sqrt(abar_T) * x0) / np.sqrt(1 - abar_T)
    steps = list(sample_loop_progressive(d, make_oracle(form, "eps", x0, y), SHAPE, y, sampler=sampler, noise=noise, clip_denoised=False))
    for s in steps:
        abar_s = d.alphas_cumprod_prev[int(s["t"][0])]
        want = np.sqrt(abar_s) * x0 + shift + np.sqrt(1 - abar_s) * eps_star
        torch.testing.assert_close(s["sample"], want, rtol=0, atol=1e-8)


def test_ddim_eta0_is_deterministic_and_ddpm_is_not():
    x0, y = problem("form1")
    d = respaced(GaussianDiffusion(get_beta_schedule("linear", T), "form1"), 20)
    w = torch.randn(3, 6, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    model = lambda x_in, t: torch.einsum("oc,nchw->nohw", w, x_in) * 0.3
    noise = torch.randn(SHAPE, dtype=torch.float64)

    def run(sampler, seed, **kw):
        return sample_loop(d, model, SHAPE, y, sampler=sampler, noise=noise, generator=torch.Generator().manual_seed(seed), **kw)

    torch.testing.assert_close(run("ddim", 1, eta=0.0), run("ddim", 2, eta=0.0), rtol=0, atol=0)
    torch.testing.assert_close(run("dpm_solver++", 1), run("dpm_solver++", 2), rtol=0, atol=0)
    assert not torch.allclose(run("ddpm", 1), run("ddpm", 2))
    assert not torch.allclose(run("ddim", 1, eta=1.0), run("ddim", 2, eta=1.0))
    torch.testing.assert_close(run("ddpm", 3), run("ddpm", 3), rtol=0, atol=0)


def test_temperature_and_generator_seed_initial_noise():
    d = GaussianDiffusion(get_beta_schedule("linear", 50), "unconditional")
    zero = lambda x_in, t: torch.zeros_like(x_in)
    first = lambda **kw: next(sample_loop_progressive(d, zero, (2, 1, 2, 2), sampler="ddim", clip_denoised=False, **kw))
    a = first(generator=torch.Generator().manual_seed(0), temperature=1.0)["sample"]
    b = first(generator=torch.Generator().manual_seed(0), temperature=0.5)["sample"]
    torch.testing.assert_close(b, 0.5 * a)


def gaussian_data_problem():
    """Data x0 ~ N(m, s^2) per pixel: the optimal x0-predictor and the probability-flow ODE map are exact:
    E[x0 | u_t] = m + s^2 a (u_t - a m) / (a^2 s^2 + sigma^2), and the ODE sends u_T to m + s z_T with
    z_T = (u_T - a_T m) / sqrt(a_T^2 s^2 + sigma_T^2)."""
    base = GaussianDiffusion(get_beta_schedule("linear", 1000), "unconditional")
    abar = torch.from_numpy(base.alphas_cumprod)
    m, s = 0.3, 0.4

    def model(x_in, t):
        a2 = abar[t].reshape(-1, 1, 1, 1)
        x0 = m + s**2 * a2.sqrt() * (x_in - a2.sqrt() * m) / (a2 * s**2 + 1 - a2)
        return (x_in - a2.sqrt() * x0) / (1 - a2).sqrt()

    u_T = torch.randn(64, 1, 1, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    a2T = abar[-1]
    exact = m + s * (u_T - a2T.sqrt() * m) / (a2T * s**2 + 1 - a2T).sqrt()
    return base, model, u_T, exact


def run_gaussian(base, model, u_T, sampler, n, spacing):
    d = respaced(base, n, spacing)
    return sample_loop(d, model, u_T.shape, sampler=sampler, noise=u_T, clip_denoised=False)


def test_dpm_solver_pp_is_second_order():
    """Halving the step size cuts DPM-Solver++(2M)'s error ~4x (second order) but DDIM's only ~2x."""
    base, model, u_T, exact = gaussian_data_problem()
    err = {
        (s, n): float((run_gaussian(base, model, u_T, s, n, "uniform") - exact).abs().max())
        for s in ("ddim", "dpm_solver++")
        for n in (80, 160)
    }
    assert err["dpm_solver++", 80] / err["dpm_solver++", 160] > 3.0
    assert 1.5 < err["ddim", 80] / err["ddim", 160] < 2.5


def test_dpm_solver_pp_beats_ddim_with_few_logsnr_steps():
    base, model, u_T, exact = gaussian_data_problem()
    err = {s: float((run_gaussian(base, model, u_T, s, 10, "logsnr") - exact).abs().max()) for s in ("ddim", "dpm_solver++")}
    assert err["dpm_solver++"] < 0.05
    assert err["dpm_solver++"] < err["ddim"] / 5


def test_sampler_config_errors():
    d = GaussianDiffusion(get_beta_schedule("linear", 50), "unconditional")
    zero = lambda x_in, t: torch.zeros_like(x_in)
    with pytest.raises(UserError, match="ddim"):
        sample_loop(d, zero, (1, 1, 2, 2), sampler="euler")
    with pytest.raises(UserError, match="conditional"):
        sample_loop(d, zero, (1, 1, 2, 2), start_step=5)
    dc = GaussianDiffusion(get_beta_schedule("linear", 50), "form2")
    y = torch.zeros(1, 1, 2, 2)
    with pytest.raises(UserError, match="start_step"):
        sample_loop(dc, lambda x_in, t: x_in[:, :1], y=y, start_step=51)
