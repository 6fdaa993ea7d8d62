"""Sweeps (-m): every job in its own folder named by what varies, and one table of all jobs at the end.

The entry-point configs set (main/configs/_sweep.yaml) each job's folder to hydra.sweep.dir/<number>_<overrides>, where
run_dir (training) or out_dir (evaluation) then points (the ``job_folder`` resolver), and register ``SweepSummary``.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, read_write

SUMMARY = "sweep_summary.csv"
RECORDS = ".jobs"  # one <job number>.json per finished job, in the sweep folder
FIRST_COLUMNS = ["job", "status", "objective", "wall_seconds", "overrides"]
LAST_COLUMNS = ["folder", "error"]


class SweepSummary(Callback):
    """Names job folders by the overrides that vary between jobs, records each job when it ends and writes
    hydra.sweep.dir/sweep_summary.csv: one row per job with its overrides, status, objective (what the entry point
    returned: final validation bits/dim or loss, test bits/dim), wall time and the metrics of its results.json.

    Jobs may run in other processes or on other machines (submitit): each writes its own record, and the table is
    rewritten from all records after every job and at the end, so a sweep stopped by a failed job still has one.
    """

    def __init__(self) -> None:
        self.started = time.time()

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        name_jobs_by_what_varies(config)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.started = time.time()

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        from lightning.fabric.utilities.rank_zero import rank_zero_only

        if config.hydra.mode != RunMode.MULTIRUN or rank_zero_only.rank != 0:  # one record per job, by its first process
            return
        sweep_dir = Path(config.hydra.sweep.dir)
        record = job_record(config, job_return, time.time() - self.started)
        write_atomically(sweep_dir / RECORDS / f"{record['job']}.json", json.dumps(record, indent=1))
        write_summary(sweep_dir)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        summary = write_summary(Path(config.hydra.sweep.dir))
        if summary is not None:
            print(f"sweep summary: {summary}")


def name_jobs_by_what_varies(config: DictConfig) -> None:
    """Exclude from hydra.job.override_dirname, and so from the job folders' names, every override of the command line
    that is the same in all jobs. Done as a Hydra override of the sweep's config, from which every job's is loaded."""
    parser = OverridesParser.create()
    fixed = {o.key_or_group for o in parser.parse_overrides(list(config.hydra.overrides.task)) if not o.is_sweep_override()}
    excluded = sorted(fixed | set(config.hydra.job.config.override_dirname.exclude_keys))
    quoted = ",".join(f"'{key}'" for key in excluded)
    with read_write(config.hydra.overrides):
        config.hydra.overrides.hydra.append(f"hydra.job.config.override_dirname.exclude_keys=[{quoted}]")


def job_record(config: DictConfig, job_return: JobReturn, seconds: float) -> dict[str, Any]:
    """One job's row: its overrides, status, objective or error, wall time, and the scalar metrics of its results.json."""
    try:
        objective, error = job_return.return_value, ""
    except Exception as err:  # a failed job's return_value raises its exception
        objective, error = None, f"{type(err).__name__}: {err}".splitlines()[0]
    task = job_return.cfg
    folder = Path(OmegaConf.select(task, "run_dir") or OmegaConf.select(task, "out_dir") or config.hydra.runtime.output_dir)
    results = folder / "results.json"
    metrics = json.loads(results.read_text())["metrics"] if results.is_file() else {}
    return {
        "job": int(config.hydra.job.num),
        "status": job_return.status.name,
        "objective": float(objective) if isinstance(objective, (int, float)) else None,
        "wall_seconds": round(seconds, 1),
        "overrides": config.hydra.job.override_dirname,
        **{name: value for name, value in metrics.items() if isinstance(value, (int, float)) and name not in FIRST_COLUMNS + LAST_COLUMNS},
        "folder": os.path.relpath(folder, config.hydra.sweep.dir),
        "error": error,
    }


def write_summary(sweep_dir: Path) -> Path | None:
    """sweep_summary.csv from the jobs' records, in job order (None before any job has ended)."""
    records = [json.loads(path.read_text()) for path in (sweep_dir / RECORDS).glob("*.json")]
    if not records:
        return None
    records.sort(key=lambda record: record["job"])
    metrics = sorted({name for record in records for name in record} - set(FIRST_COLUMNS) - set(LAST_COLUMNS))
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=FIRST_COLUMNS + metrics + LAST_COLUMNS)
    writer.writeheader()
    writer.writerows(records)
    return write_atomically(sweep_dir / SUMMARY, text.getvalue())


def write_atomically(path: Path, text: str) -> Path:
    """Write a whole file or nothing; the temporary name is this process's, since jobs may end at the same time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_text(text)
    os.replace(partial, path)
    return path
