"""Gaussian diffusion (DDPM) for DiffuseVAE's stage two: forward process, posteriors, model parameterisations.

Notation (0-based step index t = 0 .. T-1, arrays of shape [T] in float64 numpy):
    beta_t, alpha_t = 1 - beta_t, abar_t = prod_{s <= t} alpha_s, abar_{-1} = 1.
Image tensors are [N, C, H, W]; ``t`` is a LongTensor [N] of step indices; ``y`` is the stage-one
(VAE) reconstruction, same shape as ``x_start``.

Formulations (``formulation``):
    'unconditional': plain DDPM, the denoiser sees x_t only.
    'form1': plain DDPM forward process; the denoiser sees concat(x_t, y) along channels.
    'form2': DiffuseVAE's shifted process; the denoiser sees concat(x_t, y) and
        q(x_t | x_0, y) = N(sqrt(abar_t) x_0 + y, (1 - abar_t) I).
        Equivalently u_t = x_t - y is a plain DDPM chain started at u = x_0, so the Markov kernel is
        q(x_t | x_{t-1}, y) = N(sqrt(alpha_t) x_{t-1} + (1 - sqrt(alpha_t)) y, beta_t I), and the
        posterior is exactly
            q(x_{t-1} | x_t, x_0, y) = N(c1_t x_0 + c2_t x_t + (1 - c2_t) y, beta~_t I),
            c1_t = beta_t sqrt(abar_{t-1}) / (1 - abar_t),  c2_t = sqrt(alpha_t) (1 - abar_{t-1}) / (1 - abar_t),
            beta~_t = beta_t (1 - abar_{t-1}) / (1 - abar_t).
        At t = 0 (abar_{-1} = 1) the mean is x_0 + y: the chain ends at the shifted data x_0 + y, so
        samplers start from y + temperature * noise and subtract y at the end.
    For 'unconditional'/'form1' the same formulas hold with the shift y replaced by 0.

Predictions (``prediction``): the network outputs eps, or v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0
(Salimans & Ho), both defined on the unshifted variable u_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

import numpy as np
import torch

from main.utils.errors import UserError


class Formulation(enum.StrEnum):
    UNCONDITIONAL = "unconditional"
    FORM1 = "form1"
    FORM2 = "form2"


class Prediction(enum.StrEnum):
    EPS = "eps"
    V = "v"


class VarianceType(enum.StrEnum):
    FIXED_LARGE = "fixed_large"  # sigma_t^2 = beta_t (beta~_1 at t = 0)
    FIXED_SMALL = "fixed_small"  # sigma_t^2 = beta~_t, the true posterior variance


def parse_enum(enum_cls: type[enum.Enum], value, what: str):
    """``enum_cls(value)``, raising a one-line UserError that lists the allowed names."""
    try:
        return enum_cls(value)
    except ValueError:
        names = ", ".join(repr(m.value) for m in enum_cls)
        raise UserError(f"unknown diffusion {what} {value!r}: set it to one of {names}") from None


def extract(arr: np.ndarray, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """arr[t] (float64 table, LongTensor [N]) as a [N, 1, ..., 1] tensor with like's dtype/device."""
    out = torch.from_numpy(arr).to(t.device)[t].to(device=like.device, dtype=like.dtype)
    return out.reshape(t.shape[0], *([1] * (like.ndim - 1)))


class GaussianDiffusion:
    """DDPM maths for a given beta schedule, formulation and network parameterisation.

    Args:
        betas: [T] noise variances in (0, 1).
        formulation: 'form1' | 'form2' | 'unconditional' (see module docstring).
        prediction: 'eps' | 'v', what the network outputs.
        timestep_map: [T] ints, the step index handed to the network for each step of this diffusion
            (identity unless built by `respace`, where it maps back to the original steps).
    """

    def __init__(self, betas, formulation: str = "form1", prediction: str = "eps", timestep_map=None):
        self.formulation = parse_enum(Formulation, formulation, "formulation")
        self.prediction = parse_enum(Prediction, prediction, "prediction")
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or betas.size == 0 or not np.all((betas > 0) & (betas < 1)):
            raise UserError("diffusion betas must be a non-empty 1-D sequence with every value in (0, 1)")
        self.betas = betas
        self.num_timesteps = T = betas.shape[0]
        self.timestep_map = np.arange(T, dtype=np.int64) if timestep_map is None else np.asarray(timestep_map, dtype=np.int64)
        if self.timestep_map.shape != (T,):
            raise ValueError(f"timestep_map must have shape ({T},), got {self.timestep_map.shape}")

        alphas = 1.0 - betas
        self.alphas_cumprod = np.cumprod(alphas)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1.0)
        # q(x_{t-1} | x_t, x_0): variance beta~_t and mean coefficients c1_t (on x_0), c2_t (on x_t - shift).
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        # beta~_0 = 0, so the log is clipped to beta~_1 at t = 0 (never used for noise there); a one-step diffusion
        # (x_T -> x_0 in one step) has no beta~_1 and takes beta_0.
        self.variance_at_0 = self.posterior_variance[1] if T > 1 else betas[0]
        self.posterior_log_variance_clipped = np.log(np.append(self.variance_at_0, self.posterior_variance[1:]))
        self.posterior_mean_coef1 = betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = np.sqrt(alphas) * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)

    # ---- conditioning -------------------------------------------------------------------------------
    @property
    def is_conditional(self) -> bool:
        return self.formulation is not Formulation.UNCONDITIONAL

    def _check_y(self, x: torch.Tensor, y: torch.Tensor | None) -> None:
        if self.is_conditional:
            if y is None or y.shape != x.shape:
                raise ValueError(f"{self.formulation.value} needs y with the image shape {tuple(x.shape)}")
        elif y is not None:
            raise ValueError("an unconditional diffusion takes no y")

    def shift(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor | float:
        """The forward-process mean offset: y for form2, 0 otherwise."""
        self._check_y(x, y)
        return y if self.formulation is Formulation.FORM2 else 0.0

    def model_input(self, x_t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """[N, C, H, W] -> network input: concat(x_t, y) [N, 2C, H, W] if conditional, else x_t."""
        self._check_y(x_t, y)
        return torch.cat([x_t, y], dim=1) if self.is_conditional else x_t

    # ---- forward process ---------------------------------------------------------------------------
    def q_mean_variance(self, x_start, t, y=None):
        """Mean, variance, log-variance of q(x_t | x_0, y), each broadcastable to x_start [N, C, H, W]."""
        mean = extract(self.sqrt_alphas_cumprod, t, x_start) * x_start + self.shift(x_start, y)
        variance = extract(1.0 - self.alphas_cumprod, t, x_start)
        return mean, variance, extract(np.log(1.0 - self.alphas_cumprod), t, x_start)

    def q_sample(self, x_start, t, y=None, noise=None):
        """Draw x_t ~ q(x_t | x_0, y): sqrt(abar_t) x_0 + shift + sqrt(1 - abar_t) noise."""
        noise = torch.randn_like(x_start) if noise is None else noise
        return (
            extract(self.sqrt_alphas_cumprod, t, x_start) * x_start
            + extract(self.sqrt_one_minus_alphas_cumprod, t, x_start) * noise
            + self.shift(x_start, y)
        )

    def q_posterior_mean_variance(self, x_start, x_t, t, y=None):
        """Mean, variance, clipped log-variance of q(x_{t-1} | x_t, x_0, y) (closed form in module docstring)."""
        shift = self.shift(x_t, y)
        mean = extract(self.posterior_mean_coef1, t, x_t) * x_start + extract(self.posterior_mean_coef2, t, x_t) * (x_t - shift) + shift
        return mean, extract(self.posterior_variance, t, x_t), extract(self.posterior_log_variance_clipped, t, x_t)

    # ---- parameterisation conversions --------------------------------------------------------------
    def predict_xstart_from_eps(self, x_t, t, eps, y=None):
        """x_0 = (x_t - shift) / sqrt(abar_t) - sqrt(1 / abar_t - 1) eps."""
        u_t = x_t - self.shift(x_t, y)
        return extract(self.sqrt_recip_alphas_cumprod, t, x_t) * u_t - extract(self.sqrt_recipm1_alphas_cumprod, t, x_t) * eps

    def predict_eps_from_xstart(self, x_t, t, pred_xstart, y=None):
        """eps = ((x_t - shift) / sqrt(abar_t) - x_0) / sqrt(1 / abar_t - 1)."""
        u_t = x_t - self.shift(x_t, y)
        return (extract(self.sqrt_recip_alphas_cumprod, t, x_t) * u_t - pred_xstart) / extract(self.sqrt_recipm1_alphas_cumprod, t, x_t)

    def v_from_xstart_eps(self, x_start, eps, t):
        """v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0."""
        return extract(self.sqrt_alphas_cumprod, t, x_start) * eps - extract(self.sqrt_one_minus_alphas_cumprod, t, x_start) * x_start

    def output_to_xstart_eps(self, model_output, x_t, t, y=None):
        """Network output (eps or v, [N, C, H, W]) -> (pred_xstart, pred_eps), for every prediction type.

        With u_t = x_t - shift: eps-prediction inverts u_t = a x_0 + s eps (a = sqrt(abar_t), s = sqrt(1 - abar_t));
        v-prediction uses x_0 = a u_t - s v and eps = s u_t + a v (since a^2 + s^2 = 1).
        """
        if self.prediction is Prediction.EPS:
            return self.predict_xstart_from_eps(x_t, t, model_output, y), model_output
        u_t = x_t - self.shift(x_t, y)
        a, s = extract(self.sqrt_alphas_cumprod, t, x_t), extract(self.sqrt_one_minus_alphas_cumprod, t, x_t)
        return a * u_t - s * model_output, s * u_t + a * model_output

    def training_target(self, x_start, noise, t):
        """What the network should output: eps, or v."""
        return noise if self.prediction is Prediction.EPS else self.v_from_xstart_eps(x_start, noise, t)

    # ---- reverse process ---------------------------------------------------------------------------
    def model_predictions(self, model: Callable, x_t, t, y=None, clip_denoised=True, model_kwargs=None):
        """Run the network at steps t; returns dict(model_output, pred_xstart, pred_eps).

        The network is called as model(model_input(x_t, y), timestep_map[t], **model_kwargs). With
        clip_denoised, pred_xstart is clamped to [-1, 1] and pred_eps recomputed to be consistent with it.
        """
        model_output = model(self.model_input(x_t, y), self.map_timesteps(t), **(model_kwargs or {}))
        pred_xstart, pred_eps = self.output_to_xstart_eps(model_output, x_t, t, y)
        if clip_denoised:
            pred_xstart = pred_xstart.clamp(-1.0, 1.0)
            pred_eps = self.predict_eps_from_xstart(x_t, t, pred_xstart, y)
        return {"model_output": model_output, "pred_xstart": pred_xstart, "pred_eps": pred_eps}

    def map_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """Step indices of this diffusion [N] -> the indices the network was trained with [N]."""
        return torch.from_numpy(self.timestep_map).to(t.device)[t]

    def p_variance(self, variance: str, t, like):
        """(variance, log_variance) of p(x_{t-1} | x_t) for 'fixed_large' or 'fixed_small'."""
        kind = parse_enum(VarianceType, variance, "variance")
        if kind is VarianceType.FIXED_SMALL:
            return extract(self.posterior_variance, t, like), extract(self.posterior_log_variance_clipped, t, like)
        large = np.append(self.variance_at_0, self.betas[1:])
        return extract(large, t, like), extract(np.log(large), t, like)

    def p_mean_variance(self, model, x_t, t, y=None, variance="fixed_large", clip_denoised=True, model_kwargs=None):
        """p(x_{t-1} | x_t): the posterior q(x_{t-1} | x_t, pred_xstart, y) mean with a fixed variance.

        Returns dict(mean, variance, log_variance, pred_xstart, pred_eps); tensors broadcast to x_t.
        """
        out = self.model_predictions(model, x_t, t, y, clip_denoised, model_kwargs)
        mean, _, _ = self.q_posterior_mean_variance(out["pred_xstart"], x_t, t, y)
        var, log_var = self.p_variance(variance, t, x_t)
        return {"mean": mean, "variance": var, "log_variance": log_var, **out}

    # ---- training ----------------------------------------------------------------------------------
    def training_loss(self, model, x_start, y=None, t=None, noise=None, model_kwargs=None, generator=None):
        """Per-sample MSE [N] between the network output and its target (eps or v) at random steps t."""
        n = x_start.shape[0]
        gen_device = generator.device if generator is not None else x_start.device  # draw where the generator lives
        if t is None:
            t = torch.randint(0, self.num_timesteps, (n,), generator=generator, device=gen_device).to(x_start.device)
        if noise is None:
            noise = torch.randn(x_start.shape, generator=generator, device=gen_device, dtype=x_start.dtype).to(x_start.device)
        x_t = self.q_sample(x_start, t, y, noise)
        model_output = model(self.model_input(x_t, y), self.map_timesteps(t), **(model_kwargs or {}))
        target = self.training_target(x_start, noise, t)
        return (model_output - target).pow(2).flatten(1).mean(dim=1)
