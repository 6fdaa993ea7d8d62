"""Controllable synthesis with stage one's latent groups, shown through the refiner too when the checkpoint is a refiner's.

    python main/control.py checkpoint=<refiner or stage-one .ckpt> task=attribute attribute.attribute=3
    python main/control.py checkpoint=... task=attribute attribute.attributes_file=attrs.csv attribute.attribute=Smiling
    python main/control.py checkpoint=... task=class_swap k=2
    python main/control.py checkpoint=... task=variation variation.temperature=0.8

The top k latent groups (coarsest first) carry an image's layout; the groups below add detail. Tasks:
- attribute: direction = mean posterior latents (top k groups, temperature 0) of images with a binary attribute
  minus those without; each image's top k latents plus strength x direction are decoded (lower groups from the
  prior at a temperature, or kept from the image). One strip per image, one column per strength.
- class_swap: an image's top k latents decoded under every class label (lower groups from the prior under it).
- variation: an image's top k latents held, the lower groups drawn from the prior at a temperature.
With a refiner checkpoint every output is shown as the stage-one image above its refinement; the refiner's initial
noise is the same in every column, so differences along a row come from stage one.
"""

from __future__ import annotations

try:  # first: puts the repository on sys.path
    from main import _bootstrap  # noqa: F401  (run as a package)
except ModuleNotFoundError:
    import _bootstrap  # noqa: F401  (run as `python main/<entry>.py`)
import csv
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Subset

from main.api import load_system
from main.datasets import build_datamodule, first_images
from main.evaluation.common import batch_generator, check_settings, dataset_config, in_batches, pick_device
from main.models.diffusion import SamplerConfig
from main.models.latent_space import LatentSpaceModel
from main.models.vdvae import HierarchicalVAE
from main.systems.stage_one import StageOneSystem
from main.systems.stage_two import StageTwoSystem
from main.utils.config import plain
from main.utils.errors import UserError, exit_on_user_error, run_entry_point
from main.utils.image_io import check_writable, save_grid, staged_folder, to_uint8
from main.utils.results import write_results

TASKS = ("attribute", "class_swap", "variation")
Decode = Callable[[torch.Generator], torch.Tensor]  # generator -> stage-one images in [-1, 1]
HasAttribute = Callable[[torch.Tensor, int], torch.Tensor]  # (labels of a batch, index of its first image) -> bool [B]


def load_stages(path: str | Path) -> tuple[HierarchicalVAE | LatentSpaceModel, StageTwoSystem | None, dict, dict]:
    """(stage one, refiner or None, checkpoint, data set config) from a refiner or a stage-one checkpoint."""
    system, checkpoint = load_system(path)
    if isinstance(system, StageOneSystem):
        return system.image_model, None, checkpoint, system.hparams.data
    if system.stage_one is None:
        raise UserError(f"'{path}' is the unconditional DDPM baseline: control needs stage one's latents (a refiner of a stage one)")
    return system.stage_one, system, checkpoint, system.hparams.data


def seeded(seed: int, device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


@dataclass
class Stages:
    """Stage one (and the refiner, if any) rendering rows of controlled images."""

    vae: HierarchicalVAE
    refiner: StageTwoSystem | None
    output: str  # stage one's rendering: mean | sample
    sampler: SamplerConfig
    device: torch.device

    def decode(self, latents: Sequence[torch.Tensor], labels, temperature: float, generator, k: int | None = None) -> torch.Tensor:
        """Images in [-1, 1] from the first k given latent groups (all if k is None); the rest drawn from the prior."""
        given = list(latents[:k]) if k is not None else list(latents)
        fixed = given + [None] * (self.vae.num_groups - len(given))
        return self.vae.sample(len(given[0]), labels, temperature, generator, self.output, latents=fixed)

    def columns(self, decodes: Sequence[tuple[Decode, torch.Tensor | None]], generator) -> tuple[torch.Tensor, torch.Tensor | None]:
        """uint8 stage-one images [N, S, C, H, W] of S columns, and their refinements (None without a refiner).

        decodes: per column (decode, refiner labels). Every column decodes with a generator of the same seed and is
        refined from the same initial noise, so a row differs only where the columns' latents or labels do.
        """
        decode_seed, refine_seed = torch.randint(2**62, (2,), generator=generator, device=self.device).tolist()
        stage_one, refined, noise = [], [], None
        for decode, labels in decodes:
            y = decode(seeded(decode_seed, self.device))
            stage_one.append(to_uint8(y))
            if self.refiner is not None:
                if noise is None:
                    noise = torch.randn((len(y), *self.refiner.image_shape), generator=generator, device=self.device)
                y = self.refiner.null_if_nonfinite(y)  # an overflowing stage one must not turn the refined image into NaN
                x = self.refiner.refine(y, self.sampler, labels, noise=noise, generator=seeded(refine_seed, self.device))
                refined.append(to_uint8(x))
        return torch.stack(stage_one, 1), torch.stack(refined, 1) if refined else None


# ---- attribute directions -----------------------------------------------------------------------------
def read_attribute(path: str, column, n: int) -> torch.Tensor:
    """Bool [n]: the attribute of images 0..n-1 (rows of a CSV with a header row, or an .npy [N] / [N, A]; > 0 = has it)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise UserError(f"attributes_file '{file}' does not exist: pass a CSV (header row) or .npy of 0/1 values, one row per image")
    if file.suffix == ".npy":
        try:
            values = np.load(file, allow_pickle=False)  # object arrays are refused: unpickling them could run code
        except (ValueError, OSError, EOFError) as err:
            raise UserError(f"cannot read '{file}' ({err}): save the attributes with np.save as numbers, [N] or [N, A]") from None
        if values.ndim not in (1, 2) or not (np.issubdtype(values.dtype, np.number) or values.dtype == bool):
            raise UserError(f"'{file}' holds a {values.ndim}-D {values.dtype} array: save 0/1 numbers as [N] or [N, A]")
        values = values[:, None] if values.ndim == 1 else values
        if not isinstance(column, int) or not 0 <= column < values.shape[1]:
            raise UserError(f"attribute={column!r}: an .npy file's columns are chosen by index, 0..{values.shape[1] - 1}")
        chosen = values[:, column].astype(np.float64)
    else:
        with file.open(newline="") as f:
            header, *rows = list(csv.reader(f))
        names = [name.strip() for name in header]
        if str(column) in names:
            index = names.index(str(column))
        elif isinstance(column, int) and 0 <= column < len(names):
            index = column
        else:
            raise UserError(f"attribute={column!r} is not a column of '{file}': use a name of {names[:8]}... or an index")
        try:
            chosen = np.array([float(row[index]) for row in rows])
        except (ValueError, IndexError):
            raise UserError(f"column {names[index]!r} of '{file}' holds a value that is not a number in every row") from None
    if len(chosen) < n:
        raise UserError(f"'{file}' has {len(chosen)} rows but the direction uses {n} images: lower attribute.n_images")
    return torch.from_numpy(chosen[:n] > 0)


def attribute_direction(
    vae: HierarchicalVAE, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], has_attribute: HasAttribute, k: int, use_labels: bool
) -> tuple[list[torch.Tensor], int, int]:
    """(per top group, mean posterior latent at temperature 0 of the images with the attribute minus those without;
    how many have it; how many do not). batches: (uint8 images, labels) in order; has_attribute(labels, start) -> bool."""
    device = next(vae.parameters()).device
    sums = [[torch.zeros(shape[1:], device=device) for shape in vae.latent_shapes(1)[:k]] for _ in range(2)]
    counts, start = [0, 0], 0
    for x, labels in batches:
        x, labels = x.to(device), labels.to(device)
        has = has_attribute(labels, start).to(device)
        for group, z in enumerate(vae.encode_latents(x, labels if use_labels else None, temperature=0.0)[:k]):
            sums[0][group] += z[has].sum(0)
            sums[1][group] += z[~has].sum(0)
        counts[0], counts[1], start = counts[0] + int(has.sum()), counts[1] + int((~has).sum()), start + len(x)
    if not all(counts):
        raise UserError(f"all {start} images {'have' if counts[0] else 'lack'} the attribute: a direction needs images with and without it")
    return [with_ / counts[0] - without / counts[1] for with_, without in zip(*sums)], *counts


def attribute_source(cfg, data_cfg) -> tuple[DataLoader, HasAttribute, str]:
    """(batches of the images the direction is averaged over, which of them have the attribute, its name)."""
    a = cfg.attribute
    split = build_datamodule(data_cfg, batch_size=1).split(a.split)
    n = len(split) if a.n_images is None else min(int(a.n_images), len(split))
    batches = DataLoader(Subset(split, range(n)), batch_size=cfg.batch_size, num_workers=cfg.num_workers)
    if a.attributes_file is not None:
        has = read_attribute(a.attributes_file, a.attribute, n)
        return batches, lambda labels, start: has[start : start + len(labels)], str(a.attribute)
    classes = int(data_cfg.get("num_classes") or 0)
    if not classes:
        raise UserError(f"data set '{data_cfg.get('name')}' has no class labels: give attribute.attributes_file")
    if isinstance(a.attribute, bool) or not isinstance(a.attribute, int) or not 0 <= a.attribute < classes:
        raise UserError(f"attribute={a.attribute!r}: without an attributes_file it is a class id, 0..{classes - 1}")
    return batches, lambda labels, start: labels == a.attribute, f"class {a.attribute}"


# ---- tasks --------------------------------------------------------------------------------------------
def attribute(stages: Stages, cfg, k: int, x, labels, generator, direction: list[torch.Tensor]):
    """Strips: the top k latents of x plus each strength times the direction."""
    a = cfg.attribute
    vae_labels = labels if cfg.use_labels else None
    latents = stages.vae.encode_latents(x, vae_labels, temperature=0.0)
    kept = None if a.lower == "image" else k  # image: every lower group keeps the image's posterior mean

    def edit(strength: float) -> Decode:
        edited = [z + strength * d for z, d in zip(latents[:k], direction)] + latents[k:]
        return lambda g: stages.decode(edited, vae_labels, a.temperature, g, kept)

    return stages.columns([(edit(float(s)), vae_labels) for s in a.strengths], generator)


def class_swap(stages: Stages, cfg, k: int, x, labels, generator, classes: list[int]):
    """Rows: images; columns: classes. The image's top k latents, decoded under each class label."""
    c = cfg.class_swap
    latents = stages.vae.encode_latents(x, labels if cfg.use_labels else None, temperature=0.0)

    def under(label: int) -> tuple[Decode, torch.Tensor]:
        new = torch.full_like(labels, label)
        return (lambda g: stages.decode(latents, new, c.temperature, g, k)), new

    return stages.columns([under(label) for label in classes], generator)


def variation(stages: Stages, cfg, k: int, x, labels, generator):
    """Rows: images; columns: the top k latents held, the lower groups drawn afresh (temperature) in each column."""
    v = cfg.variation
    vae, vae_labels = stages.vae, labels if cfg.use_labels else None
    latents = vae.encode_latents(x, vae_labels, temperature=0.0)[:k]
    shapes = vae.latent_shapes(len(x))[k:]

    def draw() -> Decode:
        noise = [None] * k + [torch.randn(shape, generator=generator, device=x.device) for shape in shapes]
        fixed = list(latents) + [None] * len(shapes)
        return lambda g: vae.sample(len(x), vae_labels, v.temperature, g, stages.output, noise=noise, latents=fixed)

    return stages.columns([(draw(), vae_labels) for _ in range(v.n)], generator)


# ---- entry --------------------------------------------------------------------------------------------
def source_images(cfg, vae: HierarchicalVAE, data_cfg, device) -> tuple[torch.Tensor, torch.Tensor]:
    """The images controlled: the first n test images, or n stage-one samples (unlabelled) as uint8."""
    if cfg.source == "test":
        x, labels = first_images(data_cfg, "test", cfg.n)
        vae.check_images(x)
        return x.to(device), labels.to(device)
    if cfg.source == "samples":
        drawn = vae.sample(cfg.n, temperature=cfg.source_temperature, generator=batch_generator(cfg.seed, -1, device))
        return vae.to_uint8(drawn), torch.full((cfg.n,), -1, device=device)
    raise UserError(f"source={cfg.source!r}: use test or samples")


def rows_of(stage_one: torch.Tensor, refined: torch.Tensor | None) -> list[torch.Tensor]:
    """Per image, its row of stage-one columns followed by its refined row (if any), as one [rows * S, C, H, W] tensor."""
    if refined is None:
        return list(stage_one)
    return [torch.cat(pair) for pair in zip(stage_one, refined)]


def spread(images: torch.Tensor | None) -> float | None:
    """Mean over images and pixels of the std across a row's columns (0-255): 0 when the control changed nothing."""
    return None if images is None else float(images.float().std(dim=1, correction=0).mean())


def run(cfg: DictConfig) -> tuple[dict, torch.Tensor, torch.Tensor | None]:
    """Run cfg.task: (what results.json holds, uint8 stage-one images [N, S, C, H, W], their refinements or None)."""
    if cfg.task not in TASKS:
        raise UserError(f"unknown task {cfg.task!r}: choose from {list(TASKS)}")
    check_settings(cfg, "n", "batch_size", *(["attribute.n_images"] if cfg.task == "attribute" else []), nullable=("attribute.n_images",))
    device = pick_device(cfg.device)
    vae, refiner, checkpoint, data = load_stages(cfg.checkpoint)
    vae, refiner = vae.to(device).eval(), refiner.to(device).eval() if refiner is not None else None
    out_dir = Path(cfg.out_dir)
    check_writable(out_dir, cfg.overwrite)
    data_cfg = dataset_config(data, cfg.dataset)
    k = vae.groups(cfg.k, minimum=1)
    start_time = time.perf_counter()
    x, labels = source_images(cfg, vae, data_cfg, device)
    output = cfg.output or (refiner.hparams.conditioning["output"] if refiner is not None else "mean")
    stages = Stages(vae, refiner, output, SamplerConfig.from_dict(cfg.sampler), device)
    metrics: dict = {"task": cfg.task, "k": k, "num_groups": vae.num_groups, "stage_one_output": output, "refined": refiner is not None}
    if cfg.task == "attribute":
        if cfg.attribute.lower not in ("prior", "image"):
            raise UserError(f"attribute.lower={cfg.attribute.lower!r}: use prior or image")
        batches, has_attribute, name = attribute_source(cfg, data_cfg)
        direction, n_with, n_without = attribute_direction(vae, batches, has_attribute, k, cfg.use_labels)
        metrics |= {"attribute": name, "n_with": n_with, "n_without": n_without}
        metrics |= {"direction_norm_per_group": [float(d.norm()) for d in direction], "strengths": list(cfg.attribute.strengths)}
        task = partial(attribute, direction=direction)
    elif cfg.task == "class_swap":
        if not vae.num_classes:
            raise UserError("class_swap needs a class-conditional stage one (vae.model.num_classes > 0); this one is unconditional")
        classes = list(range(vae.num_classes)) if cfg.class_swap.classes is None else [int(c) for c in cfg.class_swap.classes]
        if not classes or any(not 0 <= c < vae.num_classes for c in classes):
            raise UserError(f"class_swap.classes={classes}: use class ids 0..{vae.num_classes - 1}")
        metrics["classes"] = classes
        task = partial(class_swap, classes=classes)
    else:
        if cfg.variation.n < 1:
            raise UserError(f"variation.n={cfg.variation.n}: use at least 1")
        task = variation

    stage_one, refined = [], []
    for start, count in in_batches(len(x), cfg.batch_size):
        batch = (x[start : start + count], labels[start : start + count], batch_generator(cfg.seed, start, device))
        s, r = task(stages, cfg, k, *batch)
        stage_one.append(s.cpu())
        refined.append(r.cpu() if r is not None else None)
    stage_one = torch.cat(stage_one)
    refined = torch.cat(refined) if refiner is not None else None
    seconds = time.perf_counter() - start_time
    write_images(cfg.task, out_dir, stage_one, refined, cfg.overwrite)
    metrics |= {
        "n_images": len(x),
        "labels": labels.tolist(),
        "columns": stage_one.shape[1],
        "stage_one_spread": spread(stage_one),
        "refined_spread": spread(refined),
        "global_step": checkpoint.get("global_step"),
    }
    results = write_results(
        out_dir / "results.json",
        task="control",
        config=plain(cfg),
        checkpoint=str(cfg.checkpoint),
        metrics=metrics,
        timings={"seconds": seconds},
    )
    return results, stage_one, refined


def write_images(task: str, out_dir: Path, stage_one: torch.Tensor, refined: torch.Tensor | None, overwrite: bool) -> None:
    """attribute: one strip per image in out_dir/attribute/; the others: one grid, out_dir/<task>_grid.png (rows: images)."""
    columns = stage_one.shape[1]
    rows = rows_of(stage_one, refined)
    if task == "attribute":
        with staged_folder(out_dir / "attribute", overwrite) as staging:
            for index, strip in enumerate(rows):
                save_grid(strip, staging / f"{index:06d}.png", nrow=columns)
    else:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_grid(torch.cat(rows), out_dir / f"{task}_grid.png", nrow=columns)


@hydra.main(config_path="configs", config_name="control", version_base="1.3")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    results, _, _ = run(cfg)
    shown = {k: v for k, v in results["metrics"].items() if not isinstance(v, list)}
    print(f"results: {shown}\nwritten to {Path(cfg.out_dir).resolve()}")


if __name__ == "__main__":
    run_entry_point(main, Path(__file__).parent / "configs")
