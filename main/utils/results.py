"""One schema for every task's results.json: task, config, checkpoint, metrics, timings, versions."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch


def versions() -> dict[str, str]:
    import lightning

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "git_commit": commit or "unknown",
        "threads": str(torch.get_num_threads()),
    }


def write_results(path: Path, task: str, config: Any, checkpoint: str | None, metrics: dict, timings: dict) -> dict:
    """Write results.json atomically and return what was written."""
    results = {
        "task": task,
        "checkpoint": checkpoint,
        "metrics": metrics,
        "timings": timings,
        "config": config,
        "versions": versions(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=2, default=str))
    os.replace(tmp, path)
    return results
