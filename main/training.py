"""The training loop all stages share: one Lightning Trainer with checkpoints, sample grids, timing, curves and optional FID.

A run folder holds one run: one process at a time (a lock held for the run's life), a new run over checkpoints is
refused unless resuming, and a resume must keep the data set, architecture and frozen first stage it was trained with.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.strategies.launchers import _SubprocessScriptLauncher
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only, rank_zero_warn
from omegaconf import DictConfig, OmegaConf

from main.callbacks.curves import TrainingCurves
from main.callbacks.fid_metrics import FIDMetrics
from main.callbacks.sample_grid import SampleGrid
from main.callbacks.step_progress import StepProgressBar
from main.callbacks.train_timer import TrainTimer
from main.datasets import build_datamodule
from main.systems.common import COMPUTE
from main.utils.checkpoint import AtomicCheckpointIO, load_checkpoint, load_tensors_only
from main.utils.config import in_sweep, plain
from main.utils.errors import UserError, check_seed, check_trainer_settings
from main.utils.hardware import resolve_auto
from main.utils.results import write_results

# Data set settings that say where and how to read the data, not what it is: a resumed run may change them.
RELOCATABLE = {"dataset.root", "dataset.download", "dataset.on_bad_file", "dataset.verify_files"}


def seed_run(seed: Any) -> None:
    """Seed Python, numpy, torch and the data workers for a training run; a seed they cannot take is one line."""
    check_seed(seed)
    pl.seed_everything(seed, workers=True)


def resume_checkpoint(resume: bool | str, run_dir: Path) -> str | None:
    """The checkpoint to continue from, refusing to start a new run over an old one.

    A job SLURM requeued (Lightning's auto-requeue at the time limit saved run_dir/hpc_ckpt_<n>.ckpt and asked for it)
    runs the same command again, without resume=true: it resumes as resume=true would, so that it goes through the
    same checks instead of being refused (or, had only an hpc checkpoint been written, resumed by Lightning unchecked).
    """
    checkpoint_dir = run_dir / "checkpoints"
    if resume is True:
        newest = newest_checkpoint(run_dir)
        if newest is None:
            last = checkpoint_dir / "last.ckpt"
            raise UserError(f"resume=true but '{last}' does not exist: start without resume, or pass resume=<checkpoint path>")
        return newest
    if resume:
        if not Path(resume).is_file():
            raise UserError(f"resume checkpoint '{resume}' does not exist: pass the path of a .ckpt file")
        return str(resume)
    if any(checkpoint_dir.glob("*.ckpt")) or any(run_dir.glob("hpc_ckpt_*.ckpt")):
        restarts = os.environ.get("SLURM_RESTART_COUNT", "0")
        if restarts.isdigit() and int(restarts) >= 1:
            path = resume_checkpoint(True, run_dir)
            job = os.environ.get("SLURM_JOB_ID", "?")
            rank_zero_info(f"SLURM requeued job {job} (restart {restarts}): resuming from '{path}' as resume=true would")
            return path
        raise UserError(
            f"'{run_dir}' already holds checkpoints: pass resume=true to continue that run, or name=<new name> to start another"
        )
    return None


def newest_checkpoint(run_dir: Path) -> str | None:
    """The one of run_dir/checkpoints/last.ckpt and Lightning's latest run_dir/hpc_ckpt_<n>.ckpt (saved at a SLURM time
    limit, usually after the last validation) with more updates; None if there is neither."""
    saved = [path for path in run_dir.glob("hpc_ckpt_*.ckpt") if path.stem.removeprefix("hpc_ckpt_").isdigit()]
    hpc = max(saved, key=lambda path: int(path.stem.removeprefix("hpc_ckpt_")), default=None)
    found = [path for path in (hpc, run_dir / "checkpoints" / "last.ckpt") if path is not None and path.is_file()]
    if len(found) < 2:
        return str(found[0]) if found else None
    steps = {path: load_tensors_only(path, "checkpoint", "delete it to resume from the other", mmap=True)["global_step"] for path in found}
    return str(max(found, key=steps.get))


def check_resume_settings(cfg: DictConfig, system: pl.LightningModule, path: str) -> None:
    """Refuse to resume ``path`` with settings other than those it was trained with: Lightning would restore its weights
    under the new data set, architecture or formulation, or put the old frozen first stage back over the one given."""
    checkpoint = load_checkpoint(path, system.STAGE, mmap=True)
    saved = checkpoint.get("hyper_parameters", {})
    fix = "resume with the run's own settings, or start a new run with name=<new name>"
    for name, key in system.RESUME_MUST_MATCH.items():
        for where, then, now in differences(saved.get(name), system.hparams.get(name), key):
            if where not in RELOCATABLE:
                raise UserError(f"cannot resume from '{path}': it was trained with {where}={short(then)}, this run has {short(now)}: {fix}")
    ours = system.state_dict()
    for module, key in system.FROZEN.items():
        theirs = {name: t for name, t in checkpoint["state_dict"].items() if name.startswith(f"{module}.")}
        mine = {name: t for name, t in ours.items() if name.startswith(f"{module}.")}
        if theirs.keys() != mine.keys() or not all(torch.equal(t, theirs[name]) for name, t in mine.items()):
            recorded = saved.get(module) or {}
            was = f" ('{recorded['checkpoint']}')" if isinstance(recorded, dict) and "checkpoint" in recorded else ""
            given = f"{key}={OmegaConf.select(cfg, key)}"
            raise UserError(f"cannot resume from '{path}': {given} is not the {module} it was trained with{was} (other weights): {fix}")


def differences(then: Any, now: Any, key: str) -> Iterator[tuple[str, Any, Any]]:
    """(dotted key, saved value, current value) wherever two configs differ; keys only one of them has (added or dropped
    by another version of the project) are not compared."""
    if isinstance(then, dict) and isinstance(now, dict):
        for name in [name for name in then if name in now]:
            yield from differences(then[name], now[name], f"{key}.{name}")
    elif then != now:
        yield key, then, now


def short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class RunCheckpoint(ModelCheckpoint):
    """One fixed file in the run's checkpoint folder (never best-v1.ckpt), that continues in place when the folder was
    moved or copied.

    Lightning keeps none of its saved state (best score, paths) when the folder's path changed, so it would then write
    best-v1.ckpt / last-v1.ckpt beside the old files and forget the best score; here paths saved under the old folder are
    read as the same files in this one, where this one holds them. Without ``monitor`` it saves at every validation.
    """

    def __init__(self, dirpath: Path, filename: str, monitor: str | None = None):
        super().__init__(dirpath=dirpath, filename=filename, monitor=monitor, mode="min", save_top_k=1, enable_version_counter=False)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        def here(path):
            return os.path.join(self.dirpath, os.path.basename(path)) if path else path

        best = state_dict.get("best_k_models", {})
        if state_dict.get("dirpath") != self.dirpath and all(os.path.isfile(here(path)) for path in best):
            moved = {
                key: here(state_dict[key]) for key in ("best_model_path", "kth_best_model_path", "last_model_path") if key in state_dict
            }
            state_dict = {**state_dict, **moved, "dirpath": self.dirpath, "best_k_models": {here(p): score for p, score in best.items()}}
        super().load_state_dict(state_dict)


def build_trainer(cfg: DictConfig, monitor: str) -> pl.Trainer:
    """Trainer from cfg.trainer, writing last.ckpt at every validation and best.ckpt when ``monitor`` improves.

    The grid and cfg.fid (off by default: FID/KID of EMA samples) draw with the preview settings the system carries;
    cfg.plots.training_curves plots the CSV log at the end, so a CSV log is kept beside TensorBoard or wandb. `auto` in
    trainer.precision and channels_last is resolved here, in cfg (main/utils/hardware.py): build the system after the Trainer.
    """
    check_trainer_settings(plain(cfg.trainer))  # first: resolve_auto names the device it would train on
    resolve_auto(cfg)
    if cfg.trainer.max_steps == 0:
        raise UserError("trainer.max_steps=0 would train nothing and write no checkpoint: give a number of updates, or -1 for no limit")
    run_dir = Path(cfg.run_dir)
    callbacks = [
        RunCheckpoint(run_dir / "checkpoints", "best", monitor),
        RunCheckpoint(run_dir / "checkpoints", "last"),
        SampleGrid(run_dir / "samples", cfg.samples.every_n_steps, cfg.samples.n, cfg.seed),
        TrainTimer(),
    ]
    fid = plain(cfg.fid)
    if fid["every_n_steps"] or fid["every_n_epochs"]:
        callbacks.append(FIDMetrics(plain(cfg.dataset), seed=cfg.seed, **fid))
    if cfg.trainer.enable_progress_bar:
        callbacks.append(StepProgressBar())
    loggers = [instantiate(cfg.logger)]
    if cfg.plots.training_curves:
        callbacks.append(TrainingCurves(run_dir / "plots" / "training_curves.png"))
        if not isinstance(loggers[0], CSVLogger):
            loggers.append(CSVLogger(run_dir, name="csv_logs"))
    plugins = [AtomicCheckpointIO()]
    trainer = pl.Trainer(**plain(cfg.trainer), callbacks=callbacks, logger=loggers, default_root_dir=run_dir, plugins=plugins)
    if in_sweep() and isinstance(trainer.strategy.launcher, _SubprocessScriptLauncher):
        raise UserError(
            f"trainer.devices={cfg.trainer.devices} in a sweep (-m): Lightning would start the other processes by running the whole "
            "sweep again; train each job on one device, or let SLURM start one per device (hydra/launcher=slurm_ddp, "
            "docs/sweeps_and_experiments.md)"
        )
    return trainer


def first_rank() -> bool:
    """Whether this process is the run's global rank 0, judged before Lightning sets ranks up: the ranks it starts, and
    those torchrun or SLURM start, find theirs in the environment."""
    return rank_zero_only.rank == 0 and os.environ.get("NODE_RANK", "0") == "0"


@contextmanager
def locked_run_dir(run_dir: Path) -> Iterator[bool]:
    """Hold run_dir/.lock for the run's life, so that a second run on the same folder is refused; yields whether this
    process holds it (the other ranks of a run share their first rank's).

    flock: the kernel releases the lock when the process ends, however it ends, so a killed run leaves no stale lock.
    The file names the holder (pid and host) for the refusal.
    """
    if not first_rank():
        yield False
        return
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        lock = open(run_dir / ".lock", "a+")
    except OSError as err:
        raise UserError(f"cannot write to run_dir '{run_dir}' ({err.strerror}): choose a writable folder with run_dir=<path>") from None
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            raise UserError(
                f"run_dir '{run_dir}' is in use by another run ({holder}): wait for it to end, or start a new run with name=<new name>"
            ) from None
        except OSError as err:  # a file system without locks (some network mounts)
            rank_zero_warn(f"cannot lock run_dir '{run_dir}' ({err.strerror}): make sure no other run uses it")
        lock.seek(0)
        lock.truncate()
        lock.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        lock.flush()
        yield True


def record_config(cfg: DictConfig, run_dir: Path) -> None:
    """The run's config and command-line overrides in run_dir/.hydra/, where Hydra would write them; written here, once the
    run holds its folder and its resume was accepted, so that a refused run leaves the record of the run it met."""
    folder = run_dir / ".hydra"
    folder.mkdir(exist_ok=True)
    files = {"config.yaml": OmegaConf.to_yaml(cfg)}
    if HydraConfig.initialized():
        files["overrides.yaml"] = OmegaConf.to_yaml(HydraConfig.get().overrides.task)
    for name, text in files.items():
        partial = folder / f".{name}.partial"
        partial.write_text(text)
        os.replace(partial, folder / name)


def fit(cfg: DictConfig, system: pl.LightningModule, trainer: pl.Trainer, batch_size: int, datamodule=None) -> Path:
    """Train (or resume) ``system`` on cfg.dataset (or on ``datamodule``, e.g. cached latents); returns the path of the last checkpoint."""
    run_dir = Path(cfg.run_dir)
    checkpoint_dir = run_dir / "checkpoints"
    with locked_run_dir(run_dir) as holder:
        ckpt_path = resume_checkpoint(cfg.resume, run_dir)
        if ckpt_path:
            check_resume_settings(cfg, system, ckpt_path)
        if holder:
            record_config(cfg, run_dir)
        system.hparams[COMPUTE] = {"precision": str(cfg.trainer.precision), "channels_last": cfg.channels_last}  # as resolved
        if datamodule is None:
            datamodule = build_datamodule(cfg.dataset, batch_size=batch_size, num_workers=cfg.num_workers, seed=cfg.seed)
        trainer.fit(system, datamodule=datamodule, ckpt_path=ckpt_path)
        last = checkpoint_dir / "last.ckpt"
        saver = next(callback for callback in trainer.checkpoint_callbacks if callback.monitor is None)  # the one of last.ckpt
        metrics = dict(trainer.callback_metrics)  # the last logged values
        # updates after the last validation (max_steps or max_time mid-interval); fast_dev_run writes no checkpoint
        if trainer.global_step > max(saver._last_global_step_saved, 0) and not trainer.fast_dev_run:
            trainer.save_checkpoint(last, weights_only=False)
            if not trainer.interrupted:
                trainer.validate(system, datamodule=datamodule, verbose=False)  # so that results.json scores the final weights
                metrics |= trainer.callback_metrics
        if holder:
            write_training_results(cfg, system, trainer, last, metrics)
    return last


def write_training_results(cfg: DictConfig, system: pl.LightningModule, trainer: pl.Trainer, last: Path, metrics: dict) -> None:
    """run_dir/results.json (main/utils/results.py's schema): the last logged value of every metric, validation's
    from the final weights, and the training time; sweeps read their objective and summary from it."""
    metrics = {name: float(value) for name, value in metrics.items() if value.numel() == 1}
    timer = next(callback for callback in trainer.callbacks if isinstance(callback, TrainTimer))
    write_results(
        Path(cfg.run_dir) / "results.json",
        task=f"train_{system.STAGE}",
        config=plain(cfg),
        checkpoint=str(last) if last.is_file() else None,
        metrics={**metrics, "global_step": trainer.global_step},
        timings={"train_seconds": timer.train_seconds},
    )


def train_and_report(train: Callable[[DictConfig], Path], cfg: DictConfig, objective: str) -> float | None:
    """Run an entry point's train(cfg) and print how long it took and where the last checkpoint is. Returns the final
    value of the ``objective`` metric, what a sweeper minimises (None if it was never measured, and on other ranks)."""
    start = time.perf_counter()
    last = train(cfg)
    seconds = time.perf_counter() - start
    if last.is_file():
        rank_zero_info(f"trained in {seconds:.0f} s; last checkpoint: {last}")
    elif cfg.trainer.get("fast_dev_run"):
        rank_zero_info(f"fast_dev_run: a batch of training and of validation ran in {seconds:.0f} s; no checkpoint is written")
    else:
        rank_zero_info(f"stopped after {seconds:.0f} s before the first update (trainer.max_time?): no checkpoint was written")
    results = Path(cfg.run_dir) / "results.json"
    if not first_rank() or not results.is_file():
        return None
    return json.loads(results.read_text())["metrics"].get(objective)
