"""Activation checkpointing: run a block without keeping its activations, and recompute them in the backward pass."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.checkpoint import checkpoint


def run_block(block: Callable, *args, checkpointed: bool):
    """block(*args); when ``checkpointed`` and grad is enabled, only the inputs are kept for the backward pass.

    torch stashes the default generators' states and restores them for the recomputation, so random draws
    (dropout, latent samples) repeat exactly and the gradients are those of the plain forward pass. Draws
    from an explicit torch.Generator would not repeat: callers must not checkpoint those.
    """
    if checkpointed and torch.is_grad_enabled():
        return checkpoint(block, *args, use_reentrant=False)
    return block(*args)
