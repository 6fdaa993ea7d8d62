"""How well the refiner copes with a degraded stage-one image: y noisy, blurred or JPEG-compressed.

    python main/noisy_conditioning.py checkpoint=outputs/run/checkpoints/last.ckpt
    python main/noisy_conditioning.py checkpoint=... n=500 corruptions.blur='[0,1,2]' sampler.steps=50

Test images x -> stage one's closest reconstruction y (every latent group from the posterior, k = all) -> y
corrupted at each (kind, strength) -> refined (fast sampler; the same initial noise at every point). PSNR and
SSIM against x of the corrupted y and of the refined image go to results.json (metrics.noisy_conditioning),
PSNR against strength to noisy_conditioning.png, and examples to noisy_conditioning_<kind>.png.
"""

from __future__ import annotations

try:  # first: puts the repository on sys.path
    from main import _bootstrap  # noqa: F401  (run as a package)
except ModuleNotFoundError:
    import _bootstrap  # noqa: F401  (run as `python main/<entry>.py`)
import time
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig
from torchmetrics.functional.image import structural_similarity_index_measure

from main.datasets import first_images
from main.evaluation.common import batch_generator, check_settings, dataset_config, in_batches, pick_device
from main.evaluation.plots import plot_noisy_conditioning
from main.models.diffusion import SamplerConfig
from main.models.diffusion.corruptions import check_strength, corrupt
from main.systems.stage_two import load_stage_two
from main.utils.config import plain
from main.utils.errors import UserError, exit_on_user_error, run_entry_point
from main.utils.image_io import check_writable, save_grid, to_uint8
from main.utils.results import write_results

UNITS = {"gaussian_noise": "noise std ([-1, 1] units)", "blur": "blur sigma (pixels)", "jpeg": "100 - JPEG quality"}


def psnr(images: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR (dB) of uint8 images, on [0, 1] (as test_ddpm's reconstructions; capped at 100 dB when equal)."""
    mse = ((images.float() - reference.float()) / 255).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-10))


def ssim(images: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM of uint8 images (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, reflect-padded borders).

    In float64: the variances are differences of nearly equal means of squares, which float32 rounds by ~1e-4.
    """
    ssim = structural_similarity_index_measure(images.double() / 255, reference.double() / 255, data_range=1.0, reduction="none")
    return ssim.float()


def corruption_points(corruptions) -> list[tuple[str, float]]:
    """(kind, strength) of every point asked for, checked before any work."""
    points = [(str(kind), float(s)) for kind, strengths in corruptions.items() for s in strengths]
    if not points:
        raise UserError("corruptions is empty: give strengths for at least one of gaussian_noise, blur, jpeg")
    for kind, strength in points:
        check_strength(kind, strength)
    return points


def evaluate(cfg: DictConfig) -> dict:
    """Refine corrupted stage-one reconstructions of test images; returns what results.json holds."""
    points = corruption_points(cfg.corruptions)
    check_settings(cfg, "n", "batch_size", "examples")
    device = pick_device(cfg.device)
    system, checkpoint = load_stage_two(cfg.checkpoint)
    if system.stage_one is None:
        raise UserError(f"'{cfg.checkpoint}' is the unconditional DDPM baseline: it has no stage-one image to corrupt")
    system = system.to(device).eval()
    out_dir = Path(cfg.out_dir)
    check_writable(out_dir, cfg.overwrite)
    x_all, labels_all = first_images(dataset_config(system.hparams.data, cfg.dataset), "test", cfg.n)
    system.stage_one.check_images(x_all)
    sampler = SamplerConfig.from_dict(cfg.sampler)
    scores = {point: {"psnr_y": [], "ssim_y": [], "psnr_refined": [], "ssim_refined": []} for point in points}
    examples: dict[tuple[str, float], tuple[torch.Tensor, torch.Tensor]] = {}
    start_time = time.perf_counter()
    for start, count in in_batches(len(x_all), cfg.batch_size):
        x, labels = x_all[start : start + count].to(device), labels_all[start : start + count].to(device)
        g = batch_generator(cfg.seed, start, device)
        y = system.condition(x, labels, g, k="all")
        noise = torch.randn((count, *system.image_shape), generator=g, device=device)
        corruption_seed, refine_seed = torch.randint(2**62, (2,), generator=g, device=device).tolist()
        done: dict = {}  # strength 0 is the same clean y for every kind: refine it once
        for kind, strength in points:
            key = None if strength == 0 else (kind, strength)
            if key not in done:
                corrupted = corrupt(y, kind, strength, torch.Generator(device).manual_seed(corruption_seed))
                refined = system.refine(corrupted, sampler, labels, noise=noise, generator=torch.Generator(device).manual_seed(refine_seed))
                done[key] = (to_uint8(corrupted), to_uint8(refined))
            corrupted, refined = done[key]
            for name, images in (("y", corrupted), ("refined", refined)):
                scores[(kind, strength)][f"psnr_{name}"].append(psnr(images, x))
                scores[(kind, strength)][f"ssim_{name}"].append(ssim(images, x))
            if start == 0:
                examples[(kind, strength)] = (corrupted[: cfg.examples].cpu(), refined[: cfg.examples].cpu())
    seconds = time.perf_counter() - start_time
    refinements = len({None if strength == 0 else (kind, strength) for kind, strength in points})  # per image
    table = []
    for (kind, strength), values in scores.items():
        row = {"corruption": kind, "strength": strength} | ({"jpeg_quality": round(100 - strength)} if kind == "jpeg" else {})
        table.append(row | {name: float(torch.cat(v).mean()) for name, v in values.items()})
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_noisy_conditioning(table, UNITS, out_dir / "noisy_conditioning.png")
    save_examples(x_all[: cfg.examples], examples, out_dir)
    return write_results(
        out_dir / "results.json",
        task="noisy_conditioning",
        config=plain(cfg),
        checkpoint=str(cfg.checkpoint),
        metrics={"noisy_conditioning": table, "n_images": len(x_all), "global_step": checkpoint.get("global_step")},
        timings={"seconds": seconds, "refinements_per_s": len(x_all) * refinements / seconds},
    )


def save_examples(x: torch.Tensor, examples: dict, out_dir: Path) -> None:
    """noisy_conditioning_<kind>.png: per example image, a row of [x, corrupted y per strength] above [x, refined per strength]."""
    for kind in dict.fromkeys(kind for kind, _ in examples):
        strengths = [s for k, s in examples if k == kind]
        rows = []
        for i in range(len(x)):
            for part in (0, 1):
                rows.append(torch.stack([x[i], *(examples[(kind, s)][part][i] for s in strengths)]))
        save_grid(torch.cat(rows), out_dir / f"noisy_conditioning_{kind}.png", nrow=len(strengths) + 1)


@hydra.main(config_path="configs", config_name="noisy_conditioning", version_base="1.3")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    results = evaluate(cfg)
    for row in results["metrics"]["noisy_conditioning"]:
        print(
            f"{row['corruption']:>14} {row['strength']:>6g}  y: {row['psnr_y']:6.2f} dB, SSIM {row['ssim_y']:.3f}   "
            f"refined: {row['psnr_refined']:6.2f} dB, SSIM {row['ssim_refined']:.3f}"
        )
    print(f"written to {Path(cfg.out_dir).resolve()}")


if __name__ == "__main__":
    run_entry_point(main, Path(__file__).parent / "configs")
