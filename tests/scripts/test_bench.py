"""scripts/bench.py, time_to_quality: when it evaluates, on which images, what decides the target, and its summary.

A stand-in system whose EMA model gives every image a known bits/dim drives the probe step by step, so the
bookkeeping is checked exactly and in milliseconds; the real training run is the benchmark itself.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from scripts import bench


class FakeSystem:
    """EMA bits/dim of an image = level + its first pixel / 100: the first test images score lower than the rest."""

    device = torch.device("cpu")

    def __init__(self):
        self.level = 9.0
        self.skipped_updates = torch.tensor(0)
        self.ema_vae = lambda x, labels: SimpleNamespace(bits_per_dim=self.level + x[:, 0, 0, 0].float() / 100)


def run_probe(levels: list[float], every: int = 2, subset: int = 4, target: float = 5.6):
    """Step the probe once per entry of levels (the model's level after that step) over 10 images 0..9."""
    images = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 3, 2, 2).contiguous()
    system = FakeSystem()
    probe = bench.QualityProbe(bench.BitsPerDimToTarget(images, subset, target), every, max_steps=len(levels))
    for level in levels:
        probe.on_train_batch_start()
        system.level = level
        probe.on_train_batch_end(None, system)
    return probe


def test_curve_points_every_k_steps_on_the_subset_and_the_whole_set_at_the_end():
    probe = run_probe([9.0, 8.0, 7.0, 6.5, 6.2])
    assert [p["step"] for p in probe.curve] == [2, 4, 5]  # every 2 steps, and the last step
    assert probe.curve[0]["subset_bpd"] == pytest.approx(8.0 + 1.5 / 100)  # images 0..3
    assert "test_bpd" not in probe.curve[0]
    assert probe.curve[-1]["test_bpd"] == pytest.approx(6.2 + 4.5 / 100)  # all ten images
    assert probe.metric.steps_to_target is None and probe.metric.seconds_to_target is None


def test_the_whole_test_set_decides_when_the_target_is_reached():
    # step 2: subset 5.615 > 5.6; step 4: the subset (5.595) reaches it but the whole set (5.625) does not;
    # step 6: both do (5.515, 5.545); step 8: the last step, evaluated whole anyway.
    probe = run_probe([6.0, 5.6, 5.6, 5.58, 5.5, 5.5, 5.4, 5.4], target=5.6)
    steps = {p["step"]: p for p in probe.curve}
    assert "test_bpd" not in steps[2]
    assert steps[4]["test_bpd"] == pytest.approx(5.625)
    assert steps[6]["test_bpd"] == pytest.approx(5.545)
    assert probe.metric.steps_to_target == 6
    assert probe.metric.seconds_to_target == pytest.approx(sum(probe.step_times[:6]))
    assert steps[8]["test_bpd"] == pytest.approx(5.445)


def test_the_training_clock_leaves_evaluation_out():
    probe = run_probe([9.0] * 4, every=1)
    assert len(probe.step_times) == 4
    assert probe.curve[-1]["train_seconds"] == pytest.approx(sum(probe.step_times))
    assert all(point["eval_seconds"] >= 0 for point in probe.curve)


def test_summary_compares_with_the_recipe_at_its_2000_steps_and_pairs_bf16_with_fp32():
    ours = {
        "train_step_s_mean": 0.5,
        "steps_to_target": 400,
        "seconds_to_target": 210.0,
        "curve": [{"step": 100, "subset_bpd": 6.0}, {"step": 200, "subset_bpd": 5.5, "test_bpd": 5.52}],
    }
    bf16 = {"curve": [{"step": 100, "subset_bpd": 6.01}, {"step": 200, "subset_bpd": 5.49, "test_bpd": 5.535}]}
    summary = bench.time_to_quality_summary({"cifar10_cpu": ours, "cifar10_cpu:bf16-mixed": bf16})
    assert summary["reference_seconds_to_target"] == bench.REFERENCE_STEPS * 0.5  # same architecture: our mean step
    assert summary["ours_over_reference_wall_clock"] == pytest.approx(210.0 / 1000.0)
    assert summary["ours_over_reference_steps"] == pytest.approx(400 / bench.REFERENCE_STEPS)
    assert summary["bf16_minus_fp32_subset_bpd"] == pytest.approx({100: 0.01, 200: -0.01})
    assert summary["bf16_minus_fp32_test_bpd"] == pytest.approx({200: 0.015})
    reference = {"train_step_s_mean": 0.6, "curve": [{"step": 2000, "subset_bpd": 5.7, "test_bpd": 5.61}]}
    with_reference = bench.time_to_quality_summary({"cifar10_cpu": ours, "vdvae_recipe": reference})
    assert with_reference["reference_seconds_to_target"] == pytest.approx(bench.REFERENCE_STEPS * 0.6)
    assert with_reference["reference_final_test_bpd"] == 5.61


def test_missing_cifar10_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("GENVAE_SHARED_DATA", str(tmp_path))
    with pytest.raises(SystemExit, match=f"needs CIFAR-10: .* in {tmp_path}; set GENVAE_SHARED_DATA"):
        bench.shared_cifar10()
