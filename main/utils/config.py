"""Small helpers around OmegaConf configs, and the resolvers the configs use to place runs and sweep jobs."""

from __future__ import annotations

import os
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

JOB_NAME_CHARS = 120  # a job folder's name stays well under the file systems' 255


def plain(value: Any) -> Any:
    """A resolved, plain-python copy of a config node (what checkpoints store); other values pass through."""
    if OmegaConf.is_config(value):
        return OmegaConf.to_container(value, resolve=True)
    return value


def in_sweep() -> bool:
    """Whether this process runs a job of a Hydra sweep (-m, or a config that sets hydra.mode=MULTIRUN)."""
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def job_folder(single_run: str) -> str:
    """``${job_folder:<folder>}``: the folder of a single run; in a sweep the job's own folder (hydra.sweep.dir/subdir),
    so that the jobs of one command never share a run folder."""
    return HydraConfig.get().runtime.output_dir if in_sweep() else single_run


def job_name(number: int, overrides: str) -> str:
    """``${job_name:${hydra.job.num},${hydra.job.override_dirname}}``: a job folder's name, its number and the
    overrides that vary between the jobs (main/sweeps.py), e.g. 1_vae.optim.lr=2e-3; path separators become '_'."""
    name = f"{number}_{overrides}".rstrip("_").replace(os.sep, "_")
    return name[:JOB_NAME_CHARS]


OmegaConf.register_new_resolver("job_folder", job_folder, replace=True)
OmegaConf.register_new_resolver("job_name", job_name, replace=True)


def print_config_tree(cfg: DictConfig) -> None:
    """Print the resolved config as a tree, one branch per top-level group, on the first process only."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only
    from rich import print as rich_print
    from rich.markup import escape
    from rich.syntax import Syntax
    from rich.tree import Tree

    if rank_zero_only.rank != 0:
        return
    tree = Tree("config", guide_style="dim")
    for key, value in cfg.items():
        if OmegaConf.is_config(value):
            text = OmegaConf.to_yaml(value, resolve=True).rstrip()
            tree.add(f"[bold]{key}").add(Syntax(text, "yaml", background_color="default", word_wrap=True))
        else:
            tree.add(f"[bold]{key}[/]: {escape(str(value))}")
    rich_print(tree)
