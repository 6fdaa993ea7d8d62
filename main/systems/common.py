"""Pieces both training systems share: the EMA rule, the LR warm-up, guarded updates, resumable RNG state, loading from a checkpoint."""

from __future__ import annotations

import math
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


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# What each optimizer setting must be (a negative lr or clip norm would quietly train backwards), and the words for it.
OPTIM_RULES = {
    "lr": (lambda v: _number(v) and v > 0, "a positive learning rate, e.g. 2e-4"),
    "betas": (lambda v: len(v) == 2 and all(_number(b) and 0 <= b < 1 for b in v), "two values in [0, 1), e.g. [0.9, 0.999]"),
    "weight_decay": (lambda v: _number(v) and v >= 0, "0 or more"),
    "warmup_steps": (lambda v: _number(v) and v >= 0, "0 or more steps"),
    "grad_clip": (lambda v: _number(v) and v > 0, "a positive gradient norm"),
}


def check_optim(optim: dict, key: str) -> None:
    """Refuse an optimizer setting out of range in one line naming it as the config does (``key``: vae.optim, ...)."""
    for name, (valid, words) in OPTIM_RULES.items():
        if name in optim and not valid(optim[name]):
            raise UserError(f"{key}.{name}={optim[name]} is not valid: use {words}")


def adamw_with_warmup(parameters, optim: dict) -> dict:
    """Fused AdamW (one kernel for all tensors: 3.5x faster on the CPU) with a linear LR warm-up, stepped per update."""
    optimizer = torch.optim.AdamW(parameters, lr=optim["lr"], betas=tuple(optim["betas"]), weight_decay=optim["weight_decay"], fused=True)
    warmup = max(1, int(optim["warmup_steps"]))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


# The hyper_parameters entry in which a run records the precision and memory layout it trained with (not a system argument).
COMPUTE = "compute"


class ResumableSystem(pl.LightningModule):
    """Tags checkpoints with their stage and carries the RNG state, so a resumed run continues the same random stream."""

    STAGE: str
    # What a resumed run must share with its checkpoint (main/training.py): hyperparameter -> the setting it comes from,
    # and frozen module -> the setting that chose it (its weights must be the checkpoint's).
    RESUME_MUST_MATCH: dict[str, str] = {}
    FROZEN: dict[str, str] = {}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["stage"] = self.STAGE
        checkpoint["rng_state"] = {
            "cpu": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.upgrade_checkpoint(checkpoint)
        self._resumed_rng_state = checkpoint.get("rng_state")

    @staticmethod
    def upgrade_checkpoint(checkpoint: dict[str, Any]) -> None:
        """Bring a checkpoint written by an earlier version up to date, in place (for resuming and loading alike)."""

    def on_train_start(self) -> None:
        """Continue the interrupted run's random stream (after Lightning's sanity check has drawn from it)."""
        state = getattr(self, "_resumed_rng_state", None)
        if state is not None:
            torch.set_rng_state(state["cpu"])
            if state["cuda"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(state["cuda"])

    @classmethod
    def from_checkpoint(cls, path: str | Path, checkpoint: dict[str, Any] | None = None):
        """Rebuild a trained system from its checkpoint alone (the checkpoint carries its config); ``checkpoint``: the
        file's contents if already read with `load_checkpoint`."""
        checkpoint = load_checkpoint(path, cls.STAGE) if checkpoint is None else checkpoint
        cls.upgrade_checkpoint(checkpoint)
        system = cls(**{name: value for name, value in checkpoint["hyper_parameters"].items() if name != COMPUTE})
        result = system.load_state_dict(checkpoint["state_dict"], strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise UserError(
                f"checkpoint '{path}' does not match the architecture its config describes "
                f"({len(result.missing_keys)} missing, {len(result.unexpected_keys)} unexpected tensors): "
                "it was edited or comes from another version"
            )
        return system, checkpoint


# Stop a run after this many skipped updates in a row when its optim config does not say.
MAX_CONSECUTIVE_SKIPS = 100


class GuardedSystem(ResumableSystem):
    """Manual optimisation with VDVAE's skipped updates, for both stages.

    A step whose loss or gradient norm is not finite on any rank, or whose gradient norm reaches
    ``optim.skip_threshold`` (default: never), touches neither the weights, the optimizer state, the LR
    schedule nor the EMA, and does not count towards max_steps. Skips are counted in ``skipped_updates``
    (a buffer, so it survives resume); ``optim.max_consecutive_skips`` in a row stop the run with a message
    instead of stalling it forever. Subclasses set ``optim`` in their hyperparameters and call `update`.
    """

    def __init__(self):
        super().__init__()
        self.automatic_optimization = False
        self.register_buffer("skipped_updates", torch.zeros((), dtype=torch.long))
        self.register_buffer("consecutive_skips", torch.zeros((), dtype=torch.long))

    def update(self, loss: torch.Tensor, module: torch.nn.Module, metrics: dict[str, torch.Tensor]) -> None:
        """Backward ``loss``, clip ``module``'s gradients, and step the optimizer, schedule and EMA unless the update is bad.

        ``metrics`` (scalars of this rank's batch) are logged as their mean over the ranks, i.e. over the global
        batch; they travel in the same all-reduce as the verdict, so that every rank skips the same updates.
        """
        optimizer = self.optimizers()
        self.manual_backward(loss)
        grad_norm = self._clip_gradients(module.parameters())
        healthy = torch.isfinite(loss) & torch.isfinite(grad_norm) & (grad_norm < self.hparams.optim.get("skip_threshold", math.inf))
        verdict = torch.stack([*(value.detach().float() for value in metrics.values()), (~healthy).float()])
        reduced = self.trainer.strategy.reduce(verdict, reduce_op="mean")
        if bool(reduced[-1] == 0):  # one host sync
            optimizer.step()
            self.lr_schedulers().step()
            self.ema.update_parameters(module)
            self.consecutive_skips.zero_()
        else:
            self._skip_update(grad_norm)
        optimizer.zero_grad(set_to_none=True)  # freed now, not beside the next forward pass's activations
        self.log_dict(dict(zip(metrics, reduced[:-1])), on_step=True, prog_bar=True)
        self.log_dict(
            {
                "train/grad_norm": grad_norm,
                "train/skipped_updates": self.skipped_updates.float(),
                "train/lr": optimizer.param_groups[0]["lr"],
            },
            on_step=True,
        )

    def _clip_gradients(self, parameters) -> torch.Tensor:
        """Clip to optim.grad_clip and return the unclipped norm; works on loss-scaled (16-mixed) gradients too."""
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        scale = float(scaler.get_scale()) if scaler is not None else 1.0
        norm = torch.nn.utils.clip_grad_norm_(parameters, self.hparams.optim["grad_clip"] * scale)
        return norm / scale

    def _skip_update(self, grad_norm: torch.Tensor) -> None:
        self.skipped_updates += 1
        self.consecutive_skips += 1
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        if scaler is not None and not torch.isfinite(grad_norm):  # fp16 overflow: lower the loss scale
            scaler.update(scaler.get_scale() * scaler.get_backoff_factor())
        limit = self.hparams.optim.get("max_consecutive_skips", MAX_CONSECUTIVE_SKIPS)
        if self.consecutive_skips >= limit:
            raise UserError(
                f"{limit} updates in a row were skipped (last gradient norm {float(grad_norm):.3g}): "
                "raise optim.skip_threshold, lower optim.lr, or check the data"
            )
