"""Respacing: run a trained diffusion on a subset of its steps (improved-diffusion's idea, DDIM's spacings).

Keeping steps S = {s_0 < s_1 < ... < s_{K-1}} of a T-step diffusion gives a K-step diffusion with the
same marginals at the kept steps: its cumulative products are abar'_k = abar_{s_k}, hence
    beta'_k = 1 - abar_{s_k} / abar_{s_{k-1}}   (abar_{s_{-1}} := 1),
and its `timestep_map` sends k -> s_k so the network still receives the step it was trained on.
"""

from __future__ import annotations

import enum
import math

import numpy as np

from main.models.diffusion.gaussian_diffusion import GaussianDiffusion, parse_enum
from main.utils.errors import UserError


class Spacing(enum.StrEnum):
    UNIFORM = "uniform"  # evenly spaced steps
    QUADRATIC = "quadratic"  # steps ~ k^2: dense near t = 0 (DDIM's CIFAR-10 choice)
    LOGSNR = "logsnr"  # steps nearest to a uniform grid in lambda = log(sqrt(abar / (1 - abar))) (suits DPM-Solver++)


def _strictly_increasing(steps: np.ndarray, last: int) -> np.ndarray:
    """Make rounded steps unique: push collisions up, then cap from the top so the last step stays ``last``."""
    steps = steps.copy()
    for i in range(1, len(steps)):
        steps[i] = max(steps[i], steps[i - 1] + 1)
    steps[-1] = last
    for i in range(len(steps) - 2, -1, -1):
        steps[i] = min(steps[i], steps[i + 1] - 1)
    return steps


def space_timesteps(num_timesteps: int, num_steps: int, spacing: str = "uniform", alphas_cumprod=None) -> np.ndarray:
    """Sorted unique int64 indices [num_steps] in [0, T-1], always including 0 and T-1 (when num_steps > 1).

    'logsnr' needs the diffusion's ``alphas_cumprod`` [T].
    """
    kind = parse_enum(Spacing, spacing, "spacing")
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or not 1 <= num_steps <= num_timesteps:
        raise UserError(f"number of sampling steps must be an integer in [1, {num_timesteps}], got {num_steps!r}")
    if num_steps == 1:
        return np.array([num_timesteps - 1], dtype=np.int64)
    last = num_timesteps - 1
    if kind is Spacing.UNIFORM:
        steps = np.round(np.linspace(0.0, last, num_steps)).astype(np.int64)
    elif kind is Spacing.QUADRATIC:
        steps = _strictly_increasing(np.floor(np.linspace(0.0, math.sqrt(last), num_steps) ** 2).astype(np.int64), last)
    else:
        if alphas_cumprod is None or len(alphas_cumprod) != num_timesteps:
            raise ValueError("'logsnr' spacing needs the diffusion's alphas_cumprod")
        abar = np.asarray(alphas_cumprod, dtype=np.float64)
        lam = 0.5 * (np.log(abar) - np.log1p(-abar))  # decreasing in t
        grid = np.linspace(lam[0], lam[-1], num_steps)
        steps = _strictly_increasing(np.abs(lam[None, :] - grid[:, None]).argmin(axis=1).astype(np.int64), last)
    assert np.all(np.diff(steps) > 0) and steps[0] >= 0 and steps[-1] == last
    return steps


def respace(diffusion: GaussianDiffusion, use_timesteps) -> GaussianDiffusion:
    """A diffusion over the kept steps ``use_timesteps`` (indices of ``diffusion``), same formulation/prediction.

    Respacing an already respaced diffusion composes the timestep maps.
    """
    steps = np.unique(np.asarray(use_timesteps, dtype=np.int64))
    if steps.size == 0 or steps[0] < 0 or steps[-1] >= diffusion.num_timesteps:
        raise UserError(f"respaced timesteps must be a non-empty subset of 0..{diffusion.num_timesteps - 1}")
    abar = diffusion.alphas_cumprod[steps]
    betas = 1.0 - abar / np.append(1.0, abar[:-1])
    return GaussianDiffusion(
        betas,
        formulation=diffusion.formulation.value,
        prediction=diffusion.prediction.value,
        timestep_map=diffusion.timestep_map[steps],
    )


def respaced(diffusion: GaussianDiffusion, num_steps: int, spacing: str = "uniform") -> GaussianDiffusion:
    """Shortcut: respace ``diffusion`` to ``num_steps`` steps chosen by ``spacing``."""
    return respace(diffusion, space_timesteps(diffusion.num_timesteps, num_steps, spacing, diffusion.alphas_cumprod))
