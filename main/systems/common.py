"""Pieces both training systems share: the EMA rule, the LR warm-up, resumable RNG state, loading from a checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from main.utils.checkpoint import load_checkpoint
from main.utils.errors import UserError


def ema_update(rate: float, warmup: bool):
    """EMA step for AveragedModel: average <- lerp(average, weights, 1 - decay).

    With warm-up the decay is min(rate, (1 + n) / (10 + n)) after n updates, so the random initial
    weights fade within the first hundreds of steps instead of weighing 0.999**n (13% after 2000 steps
    at rate 0.999); after 10 / (1 - rate) updates it is the constant rate.
    """

    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        n = float(num_averaged)
        decay = min(rate, (1 + n) / (10 + n)) if warmup else rate
        torch._foreach_lerp_(averaged, current, 1.0 - decay)

    return update


def adamw_with_warmup(parameters, optim: dict) -> dict:
    """Fused AdamW (one kernel for all tensors: 3.5x faster on the CPU) with a linear LR warm-up, stepped per update."""
    optimizer = torch.optim.AdamW(parameters, lr=optim["lr"], betas=tuple(optim["betas"]), weight_decay=optim["weight_decay"], fused=True)
    warmup = max(1, int(optim["warmup_steps"]))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


class ResumableSystem(pl.LightningModule):
    """Tags checkpoints with their stage and carries the RNG state, so a resumed run continues the same random stream."""

    STAGE: str

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["stage"] = self.STAGE
        checkpoint["rng_state"] = {
            "cpu": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._resumed_rng_state = checkpoint.get("rng_state")

    def on_train_start(self) -> None:
        """Continue the interrupted run's random stream (after Lightning's sanity check has drawn from it)."""
        state = getattr(self, "_resumed_rng_state", None)
        if state is not None:
            torch.set_rng_state(state["cpu"])
            if state["cuda"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(state["cuda"])

    @classmethod
    def from_checkpoint(cls, path: str | Path):
        """Rebuild a trained system from its checkpoint alone (the checkpoint carries its config)."""
        checkpoint = load_checkpoint(path, cls.STAGE)
        system = cls(**checkpoint["hyper_parameters"])
        result = system.load_state_dict(checkpoint["state_dict"], strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise UserError(
                f"checkpoint '{path}' does not match the architecture its config describes "
                f"({len(result.missing_keys)} missing, {len(result.unexpected_keys)} unexpected tensors): "
                "it was edited or comes from another version"
            )
        return system, checkpoint
