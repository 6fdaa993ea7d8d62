"""scripts/bench.py, time_to_quality and refiner_time_to_quality: when they evaluate, on what, what decides the target, and the summaries.

A stand-in system whose EMA model gives every image a known bits/dim drives the probe step by step, so the
bookkeeping is checked exactly and in milliseconds; the real training run is the benchmark itself.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
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


# ---- refiner_time_to_quality --------------------------------------------------------------------------------------


def eps_and_v_twins(formulation: str):
    """An eps- and a v-predicting diffusion with stub networks that make the same prediction: the v network outputs the
    v of the eps network's eps_hat (and of the x_0 that eps_hat implies)."""
    from main.models.diffusion import GaussianDiffusion, get_beta_schedule

    betas = get_beta_schedule("linear", 1000)
    eps_diffusion, v_diffusion = GaussianDiffusion(betas, formulation, "eps"), GaussianDiffusion(betas, formulation, "v")

    def eps_net(network_input, t):
        x_t, y = network_input.chunk(2, dim=1)
        return 0.7 * x_t - 0.3 * y + 0.001 * t.view(-1, 1, 1, 1)

    def v_net(network_input, t):
        x_t, y = network_input.chunk(2, dim=1)
        eps_hat = eps_net(network_input, t)
        return v_diffusion.v_from_xstart_eps(eps_diffusion.predict_xstart_from_eps(x_t, t, eps_hat, y), eps_hat, t)

    return (eps_diffusion, eps_net), (v_diffusion, v_net)


@pytest.mark.parametrize("formulation", ["form1", "form2"])
def test_the_refiner_metric_is_the_same_for_an_eps_and_a_v_network_making_the_same_prediction(formulation):
    generator = torch.Generator().manual_seed(1)
    x_start, y = (torch.rand(6, 3, 4, 4, generator=generator) * 2 - 1 for _ in range(2))
    t = torch.tensor([0, 10, 200, 500, 900, 999])
    noise = torch.randn(x_start.shape, generator=generator)
    (eps_diffusion, eps_net), (v_diffusion, v_net) = eps_and_v_twins(formulation)
    from_eps = bench.epsilon_mse(eps_diffusion, eps_net, x_start, t, noise, y)
    from_v = bench.epsilon_mse(v_diffusion, v_net, x_start, t, noise, y)
    x_t = eps_diffusion.q_sample(x_start, t, y, noise)
    by_hand = (noise - eps_net(torch.cat([x_t, y], dim=1), t)).pow(2).flatten(1).mean(dim=1)
    assert from_eps == pytest.approx(by_hand, rel=1e-5)
    assert from_v == pytest.approx(by_hand, rel=1e-3, abs=1e-5)  # float32 round trip through x_0 at t = 0 loses a little
    # v against the noise directly (the training loss's units) is another number: the conversion is what makes them agree.
    v_out = v_net(v_diffusion.model_input(x_t, y), t)
    assert (v_out - noise).pow(2).flatten(1).mean(dim=1) != pytest.approx(by_hand, rel=0.1)


def refiner(prediction: str):
    """A ddpm=cifar10_cpu refiner over the cifar10_cpu VAE with random weights (the same for every call)."""
    from main.train_ddpm import refiner_unet_kwargs

    torch.manual_seed(0)
    cfg = bench.compose_ddpm("cifar10_cpu", (f"ddpm.diffusion.prediction={prediction}",))
    return bench.refiner_system(cfg, refiner_unet_kwargs(cfg, 10), bench.cpu_vae())


def test_the_refiner_metric_draws_t_noise_and_conditions_once_and_every_run_gets_the_same():
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    labels = torch.arange(6)
    ours, recipe = refiner("v"), refiner("eps")
    first, second = bench.RefinerEpsilonLoss(ours, images, labels), bench.RefinerEpsilonLoss(recipe, images, labels)
    for key, value in first.draws.items():
        assert torch.equal(value, second.draws[key]), key
    assert first.draws["y"].std() > 0.1 and not torch.equal(first.draws["y"], first.draws["x_start"])  # stage one's images
    reseeded = bench.RefinerEpsilonLoss(ours, images, labels, seed=1)
    assert not torch.equal(reseeded.draws["noise"], first.draws["noise"])
    assert not torch.equal(reseeded.draws["y"], first.draws["y"])  # the stage one's prior draws come from the seed too
    modes = []
    ours.ema.module.register_forward_pre_hook(lambda module, args: modes.append(module.training))
    assert first(ours) == first(ours)  # the same draws at every point
    assert modes == [False, False] and ours.ema.module.training  # evaluated in eval mode, the mode restored after


def refiner_run(steps: list[tuple[int, float, float]], step_s: float = 0.5) -> dict:
    """A run's JSON with a curve of (step, training seconds, eps_mse) points."""
    curve = [{"step": s, "train_seconds": seconds, "eps_mse": value} for s, seconds, value in steps]
    return {
        "curve": curve,
        "steps": curve[-1]["step"],
        "train_step_s_mean": step_s,
        "final_eps_mse": curve[-1]["eps_mse"],
        "stage_one": {"ema_subset_bpd": 7.0},
    }


def test_refiner_summary_finds_where_ours_first_reaches_the_recipes_final_value():
    recipe = refiner_run([(100, 60.0, 0.30), (2000, 1200.0, 0.08)], step_s=0.6)
    ours = refiner_run([(100, 50.0, 0.20), (200, 100.0, 0.08), (300, 150.0, 0.07), (2000, 1000.0, 0.05)])
    eps = refiner_run([(100, 55.0, 0.50), (2000, 1100.0, 0.06)])
    summary = bench.refiner_time_to_quality_summary({"refiner_cpu": ours, "diffusevae_recipe": recipe, "refiner_cpu_eps": eps})
    assert summary["target_eps_mse"] == 0.08
    assert (summary["refiner_cpu_eps_steps_to_target"], summary["refiner_cpu_eps_over_recipe_steps"]) == (2000, 1.0)
    assert (summary["refiner_cpu_steps_to_target"], summary["refiner_cpu_seconds_to_target"]) == (200, 100.0)  # reaching it counts
    assert summary["recipe_train_seconds"] == pytest.approx(2000 * 0.6)
    assert summary["refiner_cpu_over_recipe_steps"] == pytest.approx(200 / 2000)
    assert summary["refiner_cpu_over_recipe_wall_clock"] == pytest.approx(100.0 / 1200.0)
    assert (summary["refiner_cpu_final_eps_mse"], summary["diffusevae_recipe_final_eps_mse"]) == (0.05, 0.08)
    assert summary["same_stage_one"] is True


def test_refiner_summary_says_none_when_ours_never_reaches_it():
    recipe = refiner_run([(2000, 1200.0, 0.08)])
    ours = refiner_run([(100, 50.0, 0.20), (2000, 1000.0, 0.081)])
    summary = bench.refiner_time_to_quality_summary({"refiner_cpu": ours, "diffusevae_recipe": recipe})
    for key in ("steps_to_target", "seconds_to_target", "over_recipe_steps", "over_recipe_wall_clock"):
        assert summary[f"refiner_cpu_{key}"] is None, key
    assert bench.refiner_time_to_quality_summary({"refiner_cpu": ours}) == {"refiner_cpu_final_eps_mse": 0.081}


@pytest.fixture
def tiny_cifar10(tmp_path, monkeypatch):
    """CIFAR-10 in the shared copy's npz layout: random images, 40 training ones past the 5,000 held out, 40 test ones."""
    rng = np.random.default_rng(0)
    for split, count in (("train_0", 5040), ("test", 40)):
        images = rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)
        np.savez(tmp_path / f"cifar10_{split}.npz", images=images, labels=np.arange(count) % 10)
    monkeypatch.setenv("GENVAE_SHARED_DATA", str(tmp_path))
    return tmp_path


def test_the_refiner_suite_runs_quick_over_a_stage_one_it_trains_or_is_given(tiny_cifar10):
    given = bench.train_stage_one(tiny_cifar10, 1, tiny_cifar10 / "stage_one.ckpt")
    ours = bench.measure_refiner_time_to_quality("refiner_cpu", quick=True)
    recipe = bench.measure_refiner_time_to_quality("diffusevae_recipe", quick=True, stage_one=str(given))
    assert ours["prediction"] == "v" and recipe["prediction"] == "eps" and recipe["optim"]["warmup_steps"] == 5000
    assert ours["stage_one"]["checkpoint"].startswith("trained here") and ours["stage_one"]["global_step"] == 1
    assert (recipe["stage_one"]["checkpoint"], recipe["stage_one"]["global_step"]) == (str(given), 1)
    for run in (ours, recipe):
        assert [p["step"] for p in run["curve"]] == [2, 3] and run["test_images"] == 32  # every 2 steps, and the last
        assert run["curve"][-1]["train_seconds"] == pytest.approx(run["train_step_s_mean"] * 3)
        assert 0 < run["final_eps_mse"] < 4 and 0 < run["stage_one"]["ema_subset_bpd"] < 16
    summary = bench.refiner_time_to_quality_summary({"refiner_cpu": ours, "diffusevae_recipe": recipe})
    assert summary["same_stage_one"] is True  # the one trained in the run is the one trained the same way before it


def test_a_stage_one_that_is_not_a_stage_one_checkpoint_is_one_line_before_any_run(tmp_path, monkeypatch, capsys):
    torch.save({"stage": "ddpm", "state_dict": {}}, tmp_path / "refiner.ckpt")
    monkeypatch.setattr("sys.argv", ["bench.py", "refiner_time_to_quality", f"--stage-one={tmp_path / 'refiner.ckpt'}"])
    with pytest.raises(SystemExit) as exit_info:
        bench.main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and "refiner.ckpt' is of stage 'ddpm'" in err
