"""scripts/memory_estimate.py: the meta-device estimate equals the same count on real tensors, and checkpointing shrinks it."""

from __future__ import annotations

import functools

import pytest
import torch

from main.train_ae import build_system
from scripts.bench import compose_preset
from scripts.memory_estimate import LiveTensors, step_memory


def test_live_tensors_counts_new_storages_until_freed():
    x = torch.zeros(1000)
    with LiveTensors() as live:
        view = x.view(10, 100)  # no new storage
        x.add_(1)  # written into its input
        y = x * 2  # 4000 new bytes
        z = y + 1  # 4000 more
        assert live.now == 8000
        del y, z
    assert (live.now, live.peak) == (0, 8000)
    assert view.shape == (10, 100)


@functools.cache
def digits_step(device: str, checkpointed: bool) -> dict:
    """step_memory of the digits VAE (8x8 images, batch 8) built on ``device``."""
    cfg = compose_preset("digits", "digits", (f"vae.activation_checkpointing={str(checkpointed).lower()}",))
    torch.manual_seed(0)
    with torch.device(device):
        system = build_system(cfg).train()
        x = torch.randint(0, 256, (8, 1, 8, 8), dtype=torch.uint8)
        labels = torch.arange(8) % 10
    return step_memory(system, system.vae, lambda: system.vae(x, labels).loss.mean())


@pytest.mark.parametrize("checkpointed", [False, True])
def test_meta_estimate_equals_the_count_on_real_tensors(checkpointed):
    meta, real = digits_step("meta", checkpointed), digits_step("cpu", checkpointed)
    assert meta == pytest.approx(real, rel=1e-12)
    assert 0 < meta["saved_for_backward_mb"] <= meta["forward_end_mb"] <= meta["forward_backward_peak_mb"]


def test_checkpointing_keeps_fewer_activations_and_a_lower_peak():
    plain, checkpointed = digits_step("meta", False), digits_step("meta", True)
    assert checkpointed["saved_for_backward_mb"] < 0.5 * plain["saved_for_backward_mb"]
    assert checkpointed["forward_backward_peak_mb"] < plain["forward_backward_peak_mb"]
    assert checkpointed["adam_moments_mb"] == plain["adam_moments_mb"] == 2 * plain["trained_parameters_mb"]
