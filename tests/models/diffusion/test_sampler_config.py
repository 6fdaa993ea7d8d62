"""SamplerConfig: the typed settings of main/configs/sampler/*.yaml, with their defaults, one-line refusals and plain dicts."""

from __future__ import annotations

import dataclasses

import pytest
from helpers import CONFIGS, compose_config
from omegaconf import OmegaConf

from main.models.diffusion import GaussianDiffusion, SamplerConfig, get_beta_schedule
from main.utils.errors import UserError


def sampler_yaml(name: str) -> dict:
    return OmegaConf.to_container(compose_config(f"sampler/{name}", []).sampler)


def test_defaults_are_the_yamls():
    assert dataclasses.asdict(SamplerConfig()) == sampler_yaml("ddim") | {"variance": "fixed_large"}
    common = OmegaConf.to_container(OmegaConf.load(CONFIGS / "sampler" / "_common.yaml"))
    assert common == {key: getattr(SamplerConfig(), key) for key in common}
    assert sampler_yaml("ddpm")["variance"] == SamplerConfig().variance


@pytest.mark.parametrize("name", ["ddim", "ddpm", "dpm_solver"])
def test_every_yaml_reads_and_round_trips_as_a_plain_dict(name):
    """A sampler config as Hydra gives it, and as older refiner checkpoints hold it (a plain dict), gives the same config."""
    settings = sampler_yaml(name)
    config = SamplerConfig.from_dict(OmegaConf.create(settings))
    assert {key: getattr(config, key) for key in settings} == settings
    assert SamplerConfig.from_dict(dataclasses.asdict(config)) == config == SamplerConfig.from_dict(settings)


def test_missing_settings_take_the_defaults():
    assert SamplerConfig.from_dict({"name": "ddpm", "steps": 2}) == dataclasses.replace(SamplerConfig(), name="ddpm", steps=2)


@pytest.mark.parametrize(
    ("settings", "key", "message"),
    [
        ({"stepz": 3}, "sampler", "sampler.stepz is not a sampler setting: use one of name, steps, spacing,"),
        ({"steps": 3, "eat": 1, "nmae": "ddim"}, "samples.sampler", "samples.sampler.eat, samples.sampler.nmae are not sampler settings"),
    ],
)
def test_an_unknown_setting_is_refused_in_one_line(settings, key, message):
    with pytest.raises(UserError, match=message) as error:
        SamplerConfig.from_dict(settings, key)
    assert "\n" not in str(error.value)


def test_the_chain_is_respaced_to_the_steps():
    diffusion = GaussianDiffusion(get_beta_schedule("cosine", 100), "form1")
    assert SamplerConfig(steps=None).chain(diffusion) is diffusion and SamplerConfig(steps=100).chain(diffusion) is diffusion
    respaced = SamplerConfig(steps=10, spacing="quadratic").chain(diffusion)
    assert respaced.num_timesteps == 10 and respaced.timestep_map[-1] == 99 and respaced.timestep_map[1] == 1
    with pytest.raises(UserError, match=r"number of sampling steps must be an integer in \[1, 100\]"):
        SamplerConfig(steps=0).chain(diffusion)
