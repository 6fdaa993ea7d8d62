"""trainer.precision=auto and channels_last=auto: the measured rules per device, and a run recording what it chose."""

from __future__ import annotations

import logging

import pytest
from helpers import tiny_train_config, user_error

from main.systems.stage_one import load_stage_one
from main.train_ae import train
from main.utils.hardware import DeviceInfo, choose_channels_last, choose_precision, device_info, resolve_auto

AVX2 = DeviceInfo("cpu", cpu_capability="AVX2", cpu_flags=frozenset({"avx2", "fma"}))
AVX512_BF16 = DeviceInfo("cpu", cpu_capability="AVX512", cpu_flags=frozenset({"avx2", "avx512f", "avx512_bf16"}))
AMX = DeviceInfo("cpu", cpu_capability="AVX512", cpu_flags=frozenset({"avx512f", "avx512_bf16", "amx_tile", "amx_bf16"}))
GPU_BF16 = DeviceInfo("cuda", cuda_bf16=True)
GPU_FP16 = DeviceInfo("cuda", cuda_bf16=False)


@pytest.mark.parametrize("stage", ["vae", "ddpm", "autoencoder"])
@pytest.mark.parametrize(
    "info, precision, channels_last",
    [
        (GPU_BF16, "bf16-mixed", True),
        (GPU_FP16, "16-mixed", True),
        (AMX, "bf16-mixed", False),
        (AVX512_BF16, "bf16-mixed", False),  # measured faster than fp32 without AMX (docs/benchmarks.md)
        (AVX2, "32-true", False),
        (DeviceInfo("mps"), "32-true", False),
    ],
)
def test_rules_per_device(stage, info, precision, channels_last):
    assert choose_precision(stage, info) == precision
    assert choose_channels_last(stage, info) is channels_last


def test_explicit_values_are_kept(tmp_path):
    cfg = tiny_train_config(tmp_path, "trainer.precision=bf16-mixed", "channels_last=true")
    resolve_auto(cfg)
    assert (cfg.trainer.precision, cfg.channels_last) == ("bf16-mixed", True)


def test_channels_last_must_be_a_setting(tmp_path):
    cfg = tiny_train_config(tmp_path, "channels_last=fast")
    assert user_error(resolve_auto, cfg) == "channels_last=fast is not a setting: use true, false or auto"


def test_auto_run_records_its_choice_in_the_checkpoint(tmp_path, caplog):
    cfg = tiny_train_config(
        tmp_path, "trainer.precision=auto", "channels_last=auto", "trainer.max_steps=2", "trainer.num_sanity_val_steps=0"
    )
    with caplog.at_level(logging.INFO):
        last = train(cfg)
    info = device_info("cpu")
    chosen = {"precision": choose_precision("vae", info), "channels_last": choose_channels_last("vae", info)}
    system, checkpoint = load_stage_one(last)  # the record is not taken for a system argument
    assert checkpoint["hyper_parameters"]["compute"] == chosen
    assert f"trainer.precision={chosen['precision']} (auto), channels_last={str(chosen['channels_last']).lower()} (auto)" in caplog.text
    assert "precision: auto" not in (tmp_path / ".hydra" / "config.yaml").read_text()  # the recorded config says what was used
