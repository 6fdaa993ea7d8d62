"""Reverse-process samplers: one step function per method, one loop that drives any of them.

Every step maps the chain state x at step index t ([N, C, H, W], with t a LongTensor [N] of equal
entries) to the state at t - 1, where "t - 1" of step 0 is the clean end (abar = 1). For form2 the
state is shifted by y (see gaussian_diffusion); `sample_loop` removes the shift at the end.

    ddpm_step:  ancestral x_{t-1} ~ N(posterior mean at pred_xstart, fixed_large | fixed_small variance).
    ddim_step:  x_{t-1} = shift + sqrt(abar_{t-1}) x0 + sqrt(1 - abar_{t-1} - sigma^2) eps + sigma z,
                sigma = eta sqrt((1 - abar_{t-1}) / (1 - abar_t)) sqrt(1 - abar_t / abar_{t-1}).
    dpm_solver_pp_step: DPM-Solver++(2M) (Lu et al. 2022, arXiv 2211.01095), data prediction, with
                alpha = sqrt(abar), sigma = sqrt(1 - abar), lambda = log(alpha / sigma), h = lambda_s - lambda_t:
                u_s = (sigma_s / sigma_t) u_t - alpha_s (e^{-h} - 1) D,  u = x - shift,
                D = x0_t (first order: first step and final step to abar = 1), else
                D = (1 + 1 / (2r)) x0_t - 1 / (2r) x0_prev with r = h_prev / h.
Use a respaced diffusion (respace.py) to sample with fewer steps. `SamplerConfig` holds one sampler's settings.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import torch

from main.models.diffusion.gaussian_diffusion import GaussianDiffusion, extract, parse_enum
from main.models.diffusion.respace import respaced
from main.utils.errors import UserError


class SamplerName(enum.StrEnum):
    DDPM = "ddpm"
    DDIM = "ddim"
    DPM_SOLVER_PP = "dpm_solver++"


def randn(shape, generator: torch.Generator | None, device, dtype) -> torch.Tensor:
    """Standard normal noise drawn on the generator's device (reproducible per seed), moved to ``device``."""
    gen_device = generator.device if generator is not None else device
    return torch.randn(tuple(shape), generator=generator, device=gen_device, dtype=dtype).to(device)


def _nonzero_mask(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[N, 1, ..., 1]: 0 where t == 0 (no noise on the last step), else 1."""
    return (t != 0).to(like.dtype).reshape(t.shape[0], *([1] * (like.ndim - 1)))


def ddpm_step(
    diffusion: GaussianDiffusion,
    model,
    x,
    t,
    y=None,
    prev=None,
    *,
    generator=None,
    variance="fixed_large",
    clip_denoised=True,
    model_kwargs=None,
    **_unused,
) -> dict:
    """Ancestral step x_t -> x_{t-1}; returns dict(sample, pred_xstart, t)."""
    out = diffusion.p_mean_variance(model, x, t, y, variance, clip_denoised, model_kwargs)
    noise = randn(x.shape, generator, x.device, x.dtype)
    sample = out["mean"] + _nonzero_mask(t, x) * torch.exp(0.5 * out["log_variance"]) * noise
    return {"sample": sample, "pred_xstart": out["pred_xstart"], "t": t}


def ddim_step(
    diffusion: GaussianDiffusion,
    model,
    x,
    t,
    y=None,
    prev=None,
    *,
    generator=None,
    eta=0.0,
    clip_denoised=True,
    model_kwargs=None,
    **_unused,
) -> dict:
    """DDIM step x_t -> x_{t-1} with stochasticity eta (0: deterministic, 1: DDPM-like); dict(sample, pred_xstart, t)."""
    out = diffusion.model_predictions(model, x, t, y, clip_denoised, model_kwargs)
    abar, abar_prev = extract(diffusion.alphas_cumprod, t, x), extract(diffusion.alphas_cumprod_prev, t, x)
    sigma = eta * torch.sqrt((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev))
    mean = (
        diffusion.shift(x, y)
        + torch.sqrt(abar_prev) * out["pred_xstart"]
        + torch.sqrt((1 - abar_prev - sigma**2).clamp(min=0.0)) * out["pred_eps"]
    )
    noise = randn(x.shape, generator, x.device, x.dtype) if eta > 0 else torch.zeros_like(x)
    sample = mean + _nonzero_mask(t, x) * sigma * noise
    return {"sample": sample, "pred_xstart": out["pred_xstart"], "t": t}


def _lambda(abar: np.ndarray) -> np.ndarray:
    """Half log-SNR lambda = log(sqrt(abar) / sqrt(1 - abar)) (float64; +inf at abar = 1)."""
    with np.errstate(divide="ignore"):
        return 0.5 * (np.log(abar) - np.log1p(-abar))


def dpm_solver_pp_step(
    diffusion: GaussianDiffusion, model, x, t, y=None, prev=None, *, clip_denoised=True, model_kwargs=None, **_unused
) -> dict:
    """DPM-Solver++(2M) step x_t -> x_{t-1} (deterministic); ``prev`` is the previous step's output or None."""
    out = diffusion.model_predictions(model, x, t, y, clip_denoised, model_kwargs)
    shift = diffusion.shift(x, y)
    abar, abar_s = diffusion.alphas_cumprod, diffusion.alphas_cumprod_prev
    lam_t, lam_s = _lambda(abar), _lambda(abar_s)
    sigma_t, sigma_s = extract(np.sqrt(1 - abar), t, x), extract(np.sqrt(1 - abar_s), t, x)
    alpha_s = extract(np.sqrt(abar_s), t, x)
    x0 = out["pred_xstart"]
    final = bool((t == 0).all())
    if final:  # sigma_s = 0, h = inf: the update is exactly x0
        u_s = alpha_s * x0
    else:
        h = extract(lam_s - lam_t, t, x)
        d = x0
        if prev is not None:
            # previous step went from t + 1 to t: h_prev = lambda_t - lambda_{t+1} = lam_s[t+1] - lam_t[t+1]
            h_prev = extract(lam_s - lam_t, prev["t"], x)
            r = h_prev / h
            d = (1 + 1 / (2 * r)) * x0 - 1 / (2 * r) * prev["pred_xstart"]
        u_s = (sigma_s / sigma_t) * (x - shift) - alpha_s * torch.expm1(-h) * d
    return {"sample": u_s + shift, "pred_xstart": x0, "t": t}


STEPS: dict[SamplerName, Callable[..., dict]] = {
    SamplerName.DDPM: ddpm_step,
    SamplerName.DDIM: ddim_step,
    SamplerName.DPM_SOLVER_PP: dpm_solver_pp_step,
}


def initial_state(
    diffusion: GaussianDiffusion,
    shape,
    y=None,
    *,
    noise=None,
    temperature=1.0,
    generator=None,
    start_step=None,
    device=None,
    dtype=torch.float32,
) -> tuple[torch.Tensor, int]:
    """(x at the first step index, that index).

    Full chain: x = shift + temperature * noise at index T-1 (shift = y for form2, else 0).
    Truncated (start_step = k in 1..T): x = q_sample(y, k-1, y, temperature * noise), i.e. y noised to
    step k and only k denoising steps are run (needs a conditional formulation).
    """
    noise = randn(shape, generator, device, dtype) if noise is None else noise.to(device=device, dtype=dtype)
    noise = temperature * noise
    if start_step is None:
        x = noise + diffusion.shift(noise, y)
        return x, diffusion.num_timesteps - 1
    if not diffusion.is_conditional or y is None:
        raise UserError("a truncated start (start_step) needs a conditional diffusion (form1 or form2) and y")
    if isinstance(start_step, bool) or not isinstance(start_step, int) or not 1 <= start_step <= diffusion.num_timesteps:
        raise UserError(f"start_step must be an integer in [1, {diffusion.num_timesteps}], got {start_step!r}")
    t = torch.full((shape[0],), start_step - 1, device=device, dtype=torch.long)
    return diffusion.q_sample(y, t, y, noise), start_step - 1


@torch.no_grad()
def sample_loop_progressive(
    diffusion: GaussianDiffusion,
    model,
    shape=None,
    y=None,
    *,
    sampler="ddpm",
    noise=None,
    temperature=1.0,
    generator=None,
    start_step=None,
    device=None,
    dtype=None,
    **step_kwargs,
) -> Iterator[dict]:
    """Yield each step's dict(sample, pred_xstart, t), from the first step index down to 0.

    shape: [N, C, H, W] (defaults to y's or noise's shape); noise: optional fixed initial noise; generator
    seeds all randomness; step_kwargs go to the step (variance, eta, clip_denoised, model_kwargs).
    """
    step = STEPS[parse_enum(SamplerName, sampler, "sampler")]
    ref = y if y is not None else noise
    if shape is None:
        if ref is None:
            raise ValueError("give shape, y or noise")
        shape = ref.shape
    device = device if device is not None else (ref.device if ref is not None else torch.device("cpu"))
    dtype = dtype if dtype is not None else (ref.dtype if ref is not None else torch.float32)
    x, first = initial_state(
        diffusion, shape, y, noise=noise, temperature=temperature, generator=generator, start_step=start_step, device=device, dtype=dtype
    )
    prev = None
    for i in range(first, -1, -1):
        t = torch.full((shape[0],), i, device=device, dtype=torch.long)
        prev = step(diffusion, model, x, t, y, prev, generator=generator, **step_kwargs)
        x = prev["sample"]
        yield prev


def sample_loop(diffusion: GaussianDiffusion, model, shape=None, y=None, **kwargs) -> torch.Tensor:
    """Run `sample_loop_progressive` to the end and return the image x_0 [N, C, H, W] (form2 shift removed)."""
    last = None
    for out in sample_loop_progressive(diffusion, model, shape, y, **kwargs):
        last = out  # keep only the latest step: the trajectory can be long
    return last["sample"] - diffusion.shift(last["sample"], y)


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
    """One sampler's settings: the keys of main/configs/sampler/*.yaml, which document them; the defaults are ddim.yaml's.

    Each value is checked where it is used: name and variance by the loop, steps and spacing by respacing, start_step by
    `initial_state`. Not registered as a Hydra schema of the sampler group: each yaml takes only its own keys (ddpm.yaml
    has no eta), which one schema of every key would lose.
    """

    name: str = "ddim"  # ddpm | ddim | dpm_solver++
    steps: int | None = 50  # None: the full chain
    spacing: str = "uniform"
    temperature: float = 1.0
    start_step: int | None = None
    guidance: float = 0.0
    clip_denoised: bool = True
    eta: float = 0.0  # ddim
    variance: str = "fixed_large"  # ddpm

    @classmethod
    def from_dict(cls, settings: Mapping[str, Any] | SamplerConfig, key: str = "sampler") -> SamplerConfig:
        """The config of a dict of settings (a DictConfig, a checkpoint's plain dict; missing ones take the defaults), refusing
        a key it does not know in one line; ``key`` names the settings in that message. A SamplerConfig is returned as is."""
        if isinstance(settings, cls):
            return settings
        names = [field.name for field in dataclasses.fields(cls)]
        unknown = [f"{key}.{name}" for name in settings if name not in names]
        if unknown:
            verb = "is not a sampler setting" if len(unknown) == 1 else "are not sampler settings"
            raise UserError(f"{', '.join(unknown)} {verb}: use one of {', '.join(names)}")
        return cls(**settings)

    def chain(self, diffusion: GaussianDiffusion) -> GaussianDiffusion:
        """The diffusion to run: ``diffusion`` itself, or respaced to ``steps`` of it."""
        steps = diffusion.num_timesteps if self.steps is None else self.steps
        return diffusion if steps == diffusion.num_timesteps else respaced(diffusion, steps, self.spacing)

    def loop_kwargs(self) -> dict[str, Any]:
        """The settings `sample_loop` takes (steps, spacing and guidance act on the chain and the denoiser)."""
        return {
            "sampler": self.name,
            "temperature": self.temperature,
            "start_step": self.start_step,
            "eta": self.eta,
            "variance": self.variance,
            "clip_denoised": self.clip_denoised,
        }
