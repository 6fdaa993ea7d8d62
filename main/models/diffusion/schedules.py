"""Beta schedules for the DDPM forward process, built in float64.

A schedule is a float64 numpy array ``betas`` of shape [T]; step t (0-based) adds noise of variance
betas[t]. From it, ``alphas_cumprod[t] = prod_{s <= t} (1 - betas[s])`` (written abar_t below).
"""

from __future__ import annotations

import enum
import math

import numpy as np

from main.utils.errors import UserError


class BetaSchedule(enum.StrEnum):
    """Names accepted by `get_beta_schedule` (a plain string works too)."""

    LINEAR = "linear"
    COSINE = "cosine"


def linear_beta_schedule(num_timesteps: int) -> np.ndarray:
    """Ho et al.'s linear schedule, 1e-4 .. 0.02 for T = 1000, rescaled for other T.

    Scaling both ends by 1000 / T keeps abar_T close to the T = 1000 value (as in improved-diffusion).
    """
    if num_timesteps <= 20:
        raise UserError(
            f"the linear beta schedule needs num_timesteps > 20 (its betas grow as 0.02 * 1000 / T), got {num_timesteps}: "
            "use more steps or the cosine schedule"
        )
    scale = 1000.0 / num_timesteps
    return np.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=np.float64)


def cosine_alphas_cumprod(t_over_T: np.ndarray, s: float = 0.008) -> np.ndarray:
    """Nichol & Dhariwal's abar(t) = f(t) / f(0) with f(t) = cos^2(((t / T + s) / (1 + s)) * pi / 2)."""

    def f(u):
        return np.cos((u + s) / (1.0 + s) * math.pi / 2.0) ** 2

    return f(np.asarray(t_over_T, dtype=np.float64)) / f(0.0)


def cosine_beta_schedule(num_timesteps: int, max_beta: float = 0.999) -> np.ndarray:
    """betas[t] = 1 - abar((t + 1) / T) / abar(t / T), clipped at ``max_beta`` to avoid beta = 1 at the end."""
    grid = np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps
    abar = cosine_alphas_cumprod(grid)
    return np.minimum(1.0 - abar[1:] / abar[:-1], max_beta)


def get_beta_schedule(name: str | BetaSchedule, num_timesteps: int) -> np.ndarray:
    """Betas [T] (float64) for a schedule named 'linear' or 'cosine'."""
    if isinstance(num_timesteps, bool) or not isinstance(num_timesteps, int) or num_timesteps < 1:
        raise UserError(f"diffusion num_timesteps must be a positive integer, got {num_timesteps!r}")
    try:
        schedule = BetaSchedule(name)
    except ValueError:
        names = ", ".join(s.value for s in BetaSchedule)
        raise UserError(f"unknown beta schedule {name!r}: set the schedule to one of {names}") from None
    if schedule is BetaSchedule.LINEAR:
        return linear_beta_schedule(num_timesteps)
    return cosine_beta_schedule(num_timesteps)
