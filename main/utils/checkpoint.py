"""Loading checkpoints safely: tensors and plain data only, and a clear line when the file is wrong."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

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
