"""Loading checkpoints safely: tensors and plain data only, and a clear line when the file is wrong."""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from main.utils.errors import UserError


def load_checkpoint(path: str | Path, expected_stage: str | tuple[str, ...]) -> dict[str, Any]:
    """Read a checkpoint without unpickling code, and check that it belongs to ``expected_stage`` (or one of them)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"checkpoint '{path}' does not exist: pass the path of a .ckpt file written by training")
    checkpoint = load_tensors_only(path, "checkpoint", "use an earlier checkpoint")
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise UserError(f"'{path}' is not a checkpoint of this project (no state_dict): pass a .ckpt file written by training")
    stage = checkpoint.get("stage")
    expected = (expected_stage,) if isinstance(expected_stage, str) else expected_stage
    if stage not in expected:
        needed = " or ".join(map(repr, expected))
        raise UserError(f"checkpoint '{path}' is of stage {stage!r}, but this command needs a {needed} checkpoint")
    return checkpoint


def load_tensors_only(path: Path, what: str, fix_if_corrupt: str) -> Any:
    """torch.load with weights_only: a file that would run code when unpickled, or a damaged one, is one clear line."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise UserError(
            f"{what} '{path}' holds objects other than tensors and plain data, so it was not loaded "
            f"(loading it could run code): {str(err).splitlines()[0]}"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as err:
        raise UserError(f"{what} '{path}' is truncated or corrupt ({str(err).splitlines()[0]}): {fix_if_corrupt}") from None


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes a checkpoint to a temporary file beside its target, syncs it, then renames it into place.

    A run killed during a save keeps its previous checkpoint intact (Lightning's own writer stages the
    file in the system temp dir and moves it, which is a copy, not a rename, across file systems).
    Remote paths (s3://, gs://, ...) go through Lightning's writer.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial")
        with open(partial, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, path)
