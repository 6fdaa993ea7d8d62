"""Stage two of DiffuseVAE (arXiv 2201.00308): a conditional DDPM refiner of the stage-one VAE output."""

from main.models.diffusion.gaussian_diffusion import GaussianDiffusion
from main.models.diffusion.respace import respace, respaced, space_timesteps
from main.models.diffusion.samplers import SamplerConfig, sample_loop, sample_loop_progressive
from main.models.diffusion.schedules import get_beta_schedule

__all__ = [
    "GaussianDiffusion",
    "SamplerConfig",
    "get_beta_schedule",
    "respace",
    "respaced",
    "sample_loop",
    "sample_loop_progressive",
    "space_timesteps",
]
