"""The tasks of main/test_ae.py: evaluate and sample a trained stage one from its checkpoint alone.

Writes to out_dir: results.json, and per task one PNG per image, a grid and an .npz.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Subset

from main.datasets import build_datamodule, first_images
from main.evaluation.common import batch_generator, check_settings, dataset_config, generate_to, pick_device
from main.evaluation.plots import plot_kl_per_group
from main.models.latent_space import LatentSpaceModel
from main.models.vdvae import HierarchicalVAE
from main.systems.stage_one import load_stage_one
from main.utils.config import plain
from main.utils.errors import UserError
from main.utils.image_io import check_writable, save_grid, save_npz, save_pngs, staged_folder
from main.utils.progress import progress_bar
from main.utils.results import write_results

TASKS = ("bpd", "iw_bpd", "samples", "class_samples", "reconstructions")
COUNTS = {  # the counts each task reads (check_settings)
    "iw_bpd": ("iw_bpd.samples", "iw_bpd.n_images"),
    "samples": ("samples.n",),
    "class_samples": ("class_samples.n_per_class",),
    "reconstructions": ("reconstructions.n",),
}


class NullLabels:
    """A loader's batches with every label -1, the null label: scored, they bound -log p(x) rather than -log p(x|c)."""

    def __init__(self, loader: DataLoader):
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for x, labels in self.loader:
            yield x, torch.full_like(labels, -1)


def test_bpd(system, data_cfg, cfg) -> tuple[dict, dict]:
    """The split's ELBO metrics. A class-conditional model is scored given each image's label (keys ``*_given_label``)
    and, if trained with the null label (label_dropout > 0), without (the plain keys, as an unconditional model's)."""
    datamodule = build_datamodule(data_cfg, batch_size=cfg.batch_size, num_workers=cfg.num_workers, seed=cfg.seed)
    datamodule.setup("test")
    n_images = len(datamodule.split(cfg.bpd.split))
    accelerator = "gpu" if pick_device(cfg.device).type == "cuda" else "cpu"
    trainer = pl.Trainer(accelerator=accelerator, devices=1, logger=False, enable_checkpointing=False, enable_model_summary=False)
    loader = {"test": datamodule.test_dataloader, "val": datamodule.val_dataloader}[cfg.bpd.split]()
    passes = {"_given_label": loader} if system.vae.num_classes else {"": loader}
    if system.vae.num_classes and system.hparams.label_dropout > 0:
        passes[""] = NullLabels(loader)
    space = "latent_" if system.autoencoder is not None else ""  # latent space: a density per latent dimension, not pixel bits
    metrics, start = {}, time.perf_counter()
    for suffix, batches in passes.items():
        torch.manual_seed(cfg.seed)  # the same posterior draws in every pass: with and without labels differ by the label only
        scores = trainer.test(system, dataloaders=batches, verbose=False)[0]
        metrics |= {f"{cfg.bpd.split}_{space}{k.split('/')[1]}{suffix}": v for k, v in scores.items()}
    seconds = time.perf_counter() - start
    return metrics, {"eval_images_per_s": n_images * len(passes) / seconds, "eval_images": n_images}


def test_iw_bpd(vae: HierarchicalVAE | LatentSpaceModel, data_cfg, cfg, device) -> tuple[dict, dict]:
    """Importance-weighted bits/dim with K posterior samples, and the ELBO on the same images, each with its standard
    error over images; the KL of each latent group shows which groups carry information."""
    c = cfg.iw_bpd
    split = build_datamodule(data_cfg, batch_size=cfg.batch_size).split(c.split)
    n = len(split) if c.n_images is None else min(int(c.n_images), len(split))
    loader = DataLoader(Subset(split, range(n)), batch_size=cfg.batch_size)
    torch.manual_seed(cfg.seed)  # the ELBO's distortion is scored at one posterior draw
    elbo_bpd, iw_bpd, kl_per_group = [], [], []
    start = time.perf_counter()
    with torch.no_grad(), progress_bar(n, "iw_bpd") as bar:
        for index, (x, labels) in enumerate(loader):
            x, labels = x.to(device), labels.to(device)
            vae.check_images(x)
            elbo = vae(x, labels)
            elbo_bpd.append(elbo.bits_per_dim)
            kl_per_group.append(elbo.kl_per_group / math.log(2))
            nll = vae.importance_weighted_nll(x, labels, c.samples, batch_generator(cfg.seed, index * cfg.batch_size, device))
            iw_bpd.append(nll / math.log(2))
            bar.update(len(x))
    seconds = time.perf_counter() - start
    elbo_bpd, iw_bpd = torch.cat(elbo_bpd).double(), torch.cat(iw_bpd).double()

    def standard_error(values: torch.Tensor) -> float:
        return float(values.std() / math.sqrt(n)) if n > 1 else float("nan")

    name = f"{c.split}_latent" if isinstance(vae, LatentSpaceModel) else c.split  # per latent dimension in latent space
    given = "_given_label" if vae.num_classes else ""  # scored with the images' labels: bounds on -log p(x|c)
    metrics = {
        f"{name}_elbo_bpd{given}": float(elbo_bpd.mean()),
        f"{name}_elbo_bpd{given}_se": standard_error(elbo_bpd),
        f"{name}_iw_bpd{given}": float(iw_bpd.mean()),
        f"{name}_iw_bpd{given}_se": standard_error(iw_bpd),
        # Image by image, the bounds differ far less than images do: the paired gain has a much smaller error.
        f"{name}_iw_gain_bpd{given}": float((elbo_bpd - iw_bpd).mean()),
        f"{name}_iw_gain_bpd{given}_se": standard_error(elbo_bpd - iw_bpd),
        "iw_samples": int(c.samples),
        "iw_images": n,
        "kl_per_group_bpd": torch.cat(kl_per_group).mean(0).tolist(),
    }
    return metrics, {"iw_bpd_seconds": seconds}


def evaluate(cfg: DictConfig) -> dict:
    unknown = set(cfg.tasks) - set(TASKS)
    if unknown:
        raise UserError(f"unknown tasks {sorted(unknown)}: choose from {list(TASKS)}")
    check_settings(cfg, "batch_size", *(key for task in cfg.tasks for key in COUNTS.get(task, ())), nullable=("iw_bpd.n_images",))
    if cfg.bpd.split not in ("test", "val"):
        raise UserError(f"bpd.split={cfg.bpd.split!r}: use test or val")
    system, checkpoint = load_stage_one(cfg.checkpoint)
    out_dir = Path(cfg.out_dir)
    check_writable(out_dir, cfg.overwrite)
    data_cfg = dataset_config(checkpoint["hyper_parameters"]["data"], cfg.dataset)
    device = pick_device(cfg.device)
    vae = system.image_model.to(device).eval()  # the VAE, or in latent space the VAE inside its autoencoder
    metrics: dict = {}
    timings: dict = {"train_seconds": checkpoint.get("callbacks", {}).get("TrainTimer", {}).get("train_seconds")}

    if "bpd" in cfg.tasks:
        m, t = test_bpd(system, data_cfg, cfg)
        metrics.update(m)
        timings.update(t)
        vae.to(device)

    if "iw_bpd" in cfg.tasks:
        m, t = test_iw_bpd(vae, data_cfg, cfg, device)
        metrics.update(m)
        timings.update(t)
        resolutions = [shape[-1] for shape in vae.latent_shapes(1)]
        plot_kl_per_group(m["kl_per_group_bpd"], resolutions, out_dir / "plots" / "kl_per_group.png")

    def seeded(start: int) -> torch.Generator:
        return batch_generator(cfg.seed, start, device)

    if "samples" in cfg.tasks:
        s = cfg.samples
        temperature = plain(s.temperature)
        drawn, seconds = generate_to(
            {"samples": out_dir / "samples"},
            s.n,
            cfg.batch_size,
            lambda start, n: {"samples": vae.to_uint8(vae.sample(n, temperature=temperature, generator=seeded(start), output=s.output))},
            cfg.overwrite,
        )
        images = drawn["samples"]
        save_grid(images[:64], out_dir / "samples_grid.png")
        save_npz(out_dir / "samples.npz", images=images)
        timings["sampling_images_per_s"] = s.n / seconds

    if "class_samples" in cfg.tasks:
        if not vae.num_classes:
            raise UserError("class_samples needs a class-conditional model (trained with vae.model.num_classes > 0)")
        c = cfg.class_samples
        labels = torch.arange(vae.num_classes, device=device).repeat_interleave(c.n_per_class)
        drawn, _ = generate_to(
            {"class_samples": out_dir / "class_samples"},
            len(labels),
            cfg.batch_size,
            lambda start, n: {
                "class_samples": vae.to_uint8(
                    vae.sample(
                        n,
                        labels=labels[start : start + n],
                        temperature=plain(c.temperature),
                        generator=seeded(start),
                        output=c.output,
                        guidance=tuple(c.guidance),
                    )
                )
            },
            cfg.overwrite,
        )
        images = drawn["class_samples"]
        save_grid(images, out_dir / "class_samples_grid.png", nrow=c.n_per_class)
        save_npz(out_dir / "class_samples.npz", images=images, labels=labels)

    if "reconstructions" in cfg.tasks:
        metrics.update(reconstructions(vae, data_cfg, cfg, out_dir, device, seeded))

    results = write_results(
        out_dir / "results.json",
        task="test_ae",
        config=plain(cfg),
        checkpoint=str(cfg.checkpoint),
        metrics={**metrics, "n_params": sum(p.numel() for p in vae.parameters()), "global_step": checkpoint.get("global_step")},
        timings=timings,
    )
    return results


def reconstructions(vae: HierarchicalVAE | LatentSpaceModel, data_cfg, cfg, out_dir: Path, device, seeded) -> dict:
    """Rows of the grid: the test images, then their reconstructions keeping the first k groups."""
    r = cfg.reconstructions
    x, labels = first_images(data_cfg, "test", r.n, "reconstructions.n")
    x, labels = x.to(device), labels.to(device)
    vae.check_images(x)
    given = r.k if OmegaConf.is_list(r.k) else [r.k]
    ks = dict.fromkeys(vae.groups(k, "reconstructions.k") for k in given)  # 'all' and '<R>px' as numbers, each once
    rows, metrics = [x.cpu()], {}
    with staged_folder(out_dir / "reconstructions", cfg.overwrite) as staging:
        for k in ks:
            recon = vae.to_uint8(vae.reconstruct(x, labels, k=k, temperature=plain(r.temperature), generator=seeded(k), output=r.output))
            (staging / f"k{k}").mkdir()
            save_pngs(recon, staging / f"k{k}")
            rows.append(recon.cpu())
            metrics[f"recon_mse_k{k}"] = float(((recon.float() - x.float()) ** 2).mean())
    save_grid(torch.cat(rows), out_dir / "reconstructions_grid.png", nrow=r.n)
    return metrics
