"""Small helpers around OmegaConf configs."""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf


def plain(value: Any) -> Any:
    """A resolved, plain-python copy of a config node (what checkpoints store); other values pass through."""
    if OmegaConf.is_config(value):
        return OmegaConf.to_container(value, resolve=True)
    return value
