"""The tasks of main/test_ddpm.py: two-stage sampling and evaluation from a refiner checkpoint alone (it holds the frozen
stage one too).

Tasks write to out_dir: samples/ (refined, one PNG per image: what FID tools read), samples_stage_one/,
a grid of stage-one images above their refinements, .npz files, and results.json; speed_quality also
speed_quality/<sampler>_<steps>/ and plots/speed_quality.png.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from omegaconf import DictConfig

from main.datasets import first_images
from main.evaluation.common import Shard, batch_generator, check_settings, dataset_config, generate_to
from main.evaluation.fid import DEFAULT_CACHE, Scorer, load_path, load_reference, parse_metrics
from main.evaluation.plots import plot_speed_quality
from main.systems.stage_two import StageTwoSystem, interleave_rows, load_stage_two
from main.utils.config import plain
from main.utils.errors import UserError
from main.utils.image_io import check_writable, save_grid, save_npz, save_pngs, staged_folder, to_uint8
from main.utils.results import write_results

TASKS = ("samples", "class_samples", "reconstructions", "interpolation", "speed_quality")
COUNTS = {  # the counts each task reads (check_settings)
    "samples": "samples.n",
    "class_samples": "class_samples.n_per_class",
    "reconstructions": "reconstructions.n",
    "interpolation": "interpolation.pairs",
    "speed_quality": "speed_quality.n",
}
PLOTTED = {"fid": "fid", "kid": "kid_mean", "isc": "is_mean", "prc": "precision"}  # the value speed_quality.png shows per metric


class StageTimer:
    """Images/s of each stage (stage one, refiner) on this rank."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.images: dict[str, int] = {}

    def __call__(self, name: str, count: int, fn, *args, **kwargs):
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
        self.images[name] = self.images.get(name, 0) + count
        return out

    def rates(self, prefix: str) -> dict[str, float]:
        return {f"{prefix}_{name}_images_per_s": self.images[name] / s for name, s in self.seconds.items() if s > 0}


def two_stage_task(
    system, cfg, out_dir: Path, name: str, n: int, labels, temperature, save_stage_one: bool, shard: Shard, sampler: dict
) -> dict:
    """Draw n two-stage samples (optionally per label) into out_dir/<name>/ and <name>_stage_one/; returns timings."""
    timed, device = StageTimer(), system.device
    with_stage_one = save_stage_one and system.stage_one is not None
    folders = {name: out_dir / name} | ({"stage_one": out_dir / f"{name}_stage_one"} if with_stage_one else {})

    # shared_noise: every image starts the refiner from the same noise, so differences come from stage one (figures)
    shared = (
        torch.randn((1, *system.image_shape), generator=batch_generator(cfg.seed, -1, device), device=device) if cfg.shared_noise else None
    )

    def draw(start: int, count: int) -> dict[str, torch.Tensor]:
        generator = batch_generator(cfg.seed, start, device)
        batch_labels = labels[start : start + count] if labels is not None else None
        y = timed("stage_one", count, system.stage_one_samples, count, batch_labels, temperature, generator) if system.stage_one else None
        noise = shared.expand(count, -1, -1, -1) if shared is not None else None
        x = timed("refiner", count, system.refine, y, sampler, batch_labels, n=count, noise=noise, generator=generator)
        return {name: to_uint8(x)} | ({"stage_one": to_uint8(y)} if with_stage_one else {})

    images, seconds = generate_to(folders, n, cfg.batch_size, draw, cfg.overwrite, shard)
    timings = {f"{name}_images_per_s": n / seconds, f"{name}_seconds": seconds}
    timings |= timed.rates(name)  # per rank
    if images is not None:  # rank 0: grid and .npz of everything the ranks wrote
        extra = {"labels": labels.cpu()} if labels is not None else {}
        save_npz(out_dir / f"{name}.npz", images=images[name], **extra)
        # with labels every image, a row per class (as test_ae.py's grid); without, the first 32 pairs or 64 images
        per_row = n // len(labels.unique()) if labels is not None else min(8, n)
        shown = n if labels is not None else 32 if with_stage_one else 64
        if with_stage_one:
            save_npz(out_dir / f"{name}_stage_one.npz", images=images["stage_one"], **extra)
            grid = interleave_rows(images["stage_one"][:shown], images[name][:shown], per_row)
            save_grid(grid, out_dir / f"{name}_grid.png", nrow=per_row)
        else:
            save_grid(images[name][:shown], out_dir / f"{name}_grid.png", nrow=per_row)
    return timings


def speed_quality(system: StageTwoSystem, cfg, out_dir: Path, shard: Shard) -> list[dict] | None:
    """Two-stage samples for every (sampler, steps) from the same seeds, timed and scored against a reference.

    Every rank generates its share; rank 0 scores each point (main/evaluation/fid.py's Scorer), draws plots/speed_quality.png and
    returns [{sampler, steps, images_per_s, refiner_images_per_s, fid, kid_mean, ...}] (None on other ranks).
    """
    c = cfg.speed_quality
    unknown = [name for name in c.samplers if name not in c.configs]
    if unknown or not c.samplers or not c.steps:
        raise UserError(
            f"speed_quality.samplers={list(c.samplers)}, steps={list(c.steps)}: list samplers among {list(c.configs)} and step counts"
        )
    data_cfg = dataset_config(system.hparams.data, cfg.dataset)
    reference, reference_name = load_reference(c.reference or f"{data_cfg.name}-test", dataset_cfg=data_cfg)
    metric_names = parse_metrics(plain(c.metrics), "speed_quality.metrics")
    scorer = Scorer(reference, reference_name, metric_names, c.weights, c.cache or DEFAULT_CACHE)  # every rank: same errors before sampling
    folder, temperature, points = out_dir / "speed_quality", plain(c.stage_one_temperature), []
    for name in c.samplers:
        for steps in c.steps:
            sampler = plain(c.configs[name]) | {"steps": steps}
            key = f"{name}_{steps}"
            timings = two_stage_task(system, cfg, folder, key, c.n, None, temperature, False, shard, sampler)
            rates = {"images_per_s": timings[f"{key}_images_per_s"], "refiner_images_per_s": timings[f"{key}_refiner_images_per_s"]}
            points.append({"sampler": name, "steps": steps} | rates)
    if shard.rank != 0:
        return None
    cuda = system.device.type == "cuda"
    for point in points:
        point |= scorer(load_path(folder / f"{point['sampler']}_{point['steps']}.npz", "samples"), cuda)
    plot_speed_quality(points, out_dir / "plots" / "speed_quality.png", PLOTTED[metric_names[0]])
    return points


def reconstructions(system: StageTwoSystem, cfg, out_dir: Path) -> dict:
    """Test images -> stage-one reconstructions (first k groups from the posterior) -> refined; MSE and PSNR of both."""
    r, device = cfg.reconstructions, system.device
    data_cfg = dataset_config(system.hparams.data, cfg.dataset)
    x, labels = first_images(data_cfg, "test", r.n, "reconstructions.n")
    x, labels = x.to(device), labels.to(device)
    system.stage_one.check_images(x)
    k = None if r.k is None else system.stage_one.groups(r.k, "reconstructions.k")  # None: the refiner's own k
    generator = batch_generator(cfg.seed, 0, device)
    y_float = system.condition(x, labels, generator, k=k)
    y, refined = to_uint8(y_float), to_uint8(system.refine(y_float, plain(cfg.sampler), labels, generator=generator))
    with staged_folder(out_dir / "reconstructions", cfg.overwrite) as staging:
        for name, images in [("original", x), ("stage_one", y), ("refined", refined)]:
            (staging / name).mkdir()
            save_pngs(images, staging / name)
    save_grid(torch.cat([x, y, refined]).cpu(), out_dir / "reconstructions_grid.png", nrow=r.n)
    metrics = {}
    for name, images in [("stage_one", y), ("refined", refined)]:
        mse = ((images.float() - x.float()) / 255).pow(2).flatten(1).mean(1)
        psnr = 10 * torch.log10(1.0 / mse.clamp_min(1e-10))
        metrics[f"recon_{name}_mse"] = mse.tolist()
        metrics[f"recon_{name}_psnr"] = psnr.tolist()
        metrics[f"recon_{name}_mean_psnr"] = float(psnr.mean())
    return metrics


def slerp(a: torch.Tensor, b: torch.Tensor, w: float) -> torch.Tensor:
    """Spherical interpolation per sample between Gaussian draws a, b [N, ...] (keeps the norm typical of the Gaussian)."""
    a_flat, b_flat = a.flatten(1), b.flatten(1)
    cos = (a_flat * b_flat).sum(1) / (a_flat.norm(dim=1) * b_flat.norm(dim=1))
    theta = torch.arccos(cos.clamp(-1.0, 1.0)).reshape(-1, *[1] * (a.dim() - 1))
    sin = torch.sin(theta)
    linear = (1 - w) * a + w * b
    spherical = (torch.sin((1 - w) * theta) * a + torch.sin(w * theta) * b) / sin.clamp_min(1e-8)
    return torch.where(sin.abs() < 1e-6, linear, spherical)


def interpolation(system: StageTwoSystem, cfg, out_dir: Path) -> None:
    """Strips: (latents) the top stage-one groups slerped, refiner noise fixed; (noise) refiner's initial noise slerped, y fixed."""
    c, vae, device, sampler = cfg.interpolation, system.stage_one, system.device, plain(cfg.sampler)
    if not 1 <= c.groups <= vae.num_groups:
        raise UserError(f"interpolation.groups={c.groups}: use 1..{vae.num_groups} (stage one has {vae.num_groups} latent groups)")
    if c.points < 2:
        raise UserError(f"interpolation.points={c.points}: use at least 2 (the endpoints)")
    g = batch_generator(cfg.seed, 0, device)
    shapes = vae.latent_shapes(c.pairs)
    ends = [[torch.randn(s, generator=g, device=device) for s in shapes[: c.groups]] for _ in range(2)]
    fixed = [torch.randn(s, generator=g, device=device) for s in shapes[c.groups :]]
    refiner_noise = [torch.randn((c.pairs, *system.image_shape), generator=g, device=device) for _ in range(2)]
    weights = torch.linspace(0, 1, c.points).tolist()

    def refine(y, noise):  # the same seed at every point: a stochastic sampler's per-step noise is held fixed too
        return system.refine(y, sampler, noise=noise, generator=batch_generator(cfg.seed, 1, device))

    latent_rows, noise_rows = [], []
    y_fixed = system.stage_one_samples(c.pairs, temperature=c.stage_one_temperature, generator=g)
    for w in weights:
        top = [slerp(a, b, w) for a, b in zip(*ends)]
        y = system.stage_one_samples(
            c.pairs, temperature=c.stage_one_temperature, noise=top + fixed, generator=batch_generator(cfg.seed, 2, device)
        )
        latent_rows.append((to_uint8(y), to_uint8(refine(y, refiner_noise[0]))))
        noise_rows.append(to_uint8(refine(y_fixed, slerp(*refiner_noise, w))))
    with staged_folder(out_dir / "interpolation", cfg.overwrite) as staging:
        for pair in range(c.pairs):
            stage_one = torch.stack([y[pair] for y, _ in latent_rows])
            refined = torch.stack([x[pair] for _, x in latent_rows])
            save_grid(torch.cat([stage_one, refined]), staging / f"latents_{pair:03d}.png", len(weights))
            noise_strip = torch.cat([to_uint8(y_fixed[pair : pair + 1]), torch.stack([x[pair] for x in noise_rows])])
            save_grid(noise_strip, staging / f"noise_{pair:03d}.png", len(weights) + 1)


def evaluate(cfg: DictConfig, device: torch.device | None = None, shard: Shard | None = None) -> dict | None:
    """Run cfg.tasks; returns what results.json holds (on rank 0; None on other ranks)."""
    unknown = set(cfg.tasks) - set(TASKS)
    if unknown:
        raise UserError(f"unknown tasks {sorted(unknown)}: choose from {list(TASKS)}")
    check_settings(cfg, "batch_size", *(COUNTS[task] for task in cfg.tasks))
    shard = shard or Shard()
    system, checkpoint = load_stage_two(cfg.checkpoint)
    system = system.to(device or torch.device("cpu")).eval()
    system.nonfinite_conditions.zero_()  # count this run's non-finite stage-one images, not training's
    out_dir = Path(cfg.out_dir)
    check_writable(out_dir, cfg.overwrite)
    shard.barrier()  # every rank has looked at out_dir before any writes to it
    classes = system.unet.num_classes or (system.stage_one.num_classes if system.stage_one is not None else 0)
    if "class_samples" in cfg.tasks and not classes:
        raise UserError("class_samples needs a class-conditional refiner or stage one")
    if {"reconstructions", "interpolation"} & set(cfg.tasks) and system.stage_one is None:
        raise UserError("reconstructions and interpolation need a refiner of a stage one (this checkpoint is the unconditional baseline)")
    metrics: dict = {}
    timings: dict = {"train_seconds": checkpoint.get("callbacks", {}).get("TrainTimer", {}).get("train_seconds")}

    if "samples" in cfg.tasks:
        s = cfg.samples
        temperature = plain(s.stage_one_temperature)
        timings |= two_stage_task(system, cfg, out_dir, "samples", s.n, None, temperature, s.save_stage_one, shard, plain(cfg.sampler))
    if "class_samples" in cfg.tasks:
        c = cfg.class_samples
        labels = torch.arange(classes, device=system.device).repeat_interleave(c.n_per_class)
        temperature = plain(c.stage_one_temperature)
        timings |= two_stage_task(system, cfg, out_dir, "class_samples", len(labels), labels, temperature, True, shard, plain(cfg.sampler))
    if "speed_quality" in cfg.tasks:
        metrics["speed_quality"] = speed_quality(system, cfg, out_dir, shard)  # None on ranks other than 0, which stop here
    if shard.rank != 0:
        return None
    if "reconstructions" in cfg.tasks:
        metrics |= reconstructions(system, cfg, out_dir)
    if "interpolation" in cfg.tasks:
        interpolation(system, cfg, out_dir)
    n_params = {"n_params_refiner": sum(p.numel() for p in system.unet.parameters())}
    if system.stage_one is not None:
        n_params["n_params_stage_one"] = sum(p.numel() for p in system.stage_one.parameters())
    return write_results(
        out_dir / "results.json",
        task="test_ddpm",
        config=plain(cfg),
        checkpoint=str(cfg.checkpoint),
        metrics={
            **metrics,
            **n_params,
            "nonfinite_stage_one_images": int(system.nonfinite_conditions),  # rank 0's; refined from the null condition
            "global_step": checkpoint.get("global_step"),
            "world_size": shard.world_size,
        },
        timings=timings,
    )
