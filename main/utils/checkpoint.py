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


def load_checkpoint(path: str | Path, expected_stage: str) -> dict[str, Any]:
    """Read a checkpoint without unpickling code, and check that it belongs to ``expected_stage``."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"checkpoint '{path}' does not exist: pass the path of a .ckpt file written by training")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise UserError(
            f"checkpoint '{path}' holds objects other than tensors and plain data, so it was not loaded "
            f"(loading it could run code): {str(err).splitlines()[0]}"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as err:
        raise UserError(f"checkpoint '{path}' is truncated or corrupt ({str(err).splitlines()[0]}): use an earlier checkpoint") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise UserError(f"'{path}' is not a checkpoint of this project (no state_dict): pass a .ckpt file written by training")
    stage = checkpoint.get("stage")
    if stage != expected_stage:
        raise UserError(f"checkpoint '{path}' is of stage {stage!r}, but this command needs a {expected_stage!r} checkpoint")
    return checkpoint


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
