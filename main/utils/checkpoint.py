"""Loading checkpoints safely: tensors and plain data only, and a clear line when the file is wrong."""

from __future__ import annotations

import errno
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from main.utils.errors import UserError


def load_checkpoint(path: str | Path, expected_stage: str | tuple[str, ...], mmap: bool = False) -> dict[str, Any]:
    """Read a checkpoint without unpickling code, and check that it belongs to ``expected_stage`` (or one of them).

    mmap: map the tensors instead of reading them (cheap when only the config and a few tensors are looked at).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"checkpoint '{path}' does not exist: pass the path of a .ckpt file written by training")
    checkpoint = load_tensors_only(path, "checkpoint", "use an earlier checkpoint", mmap=mmap)
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise UserError(f"'{path}' is not a checkpoint of this project (no state_dict): pass a .ckpt file written by training")
    stage = checkpoint.get("stage")
    expected = (expected_stage,) if isinstance(expected_stage, str) else expected_stage
    if stage not in expected:
        needed = " or ".join(map(repr, expected))
        raise UserError(f"checkpoint '{path}' is of stage {stage!r}, but this command needs a {needed} checkpoint")
    return checkpoint


def load_tensors_only(path: Path, what: str, fix_if_corrupt: str, mmap: bool = False) -> Any:
    """torch.load with weights_only: a file that would run code when unpickled, or a damaged one, is one clear line.

    weights_only=True is passed explicitly, which no environment variable overrides (TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD
    only changes calls that leave weights_only unset; TORCH_FORCE_WEIGHTS_ONLY_LOAD only forces it on). Every checkpoint
    the project reads comes through here, Lightning's resume included (`AtomicCheckpointIO.load_checkpoint`).
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        raise UserError(
            f"{what} '{path}' holds objects other than tensors and plain data, so it was not loaded "
            f"(loading it could run code): {refusal_reason(str(err))}"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as err:
        raise UserError(f"{what} '{path}' is truncated or corrupt ({str(err).splitlines()[0]}): {fix_if_corrupt}") from None


def refusal_reason(message: str) -> str:
    """The restricted unpickler's own reason ("Unsupported global: GLOBAL io.open ...") without torch's advice to load it anyway."""
    found = re.search(r"WeightsUnpickler error: (.+?)(\.\s|$)", message, re.MULTILINE)
    return found.group(1) if found else message.splitlines()[0]


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes a checkpoint to a temporary file beside its target, syncs it, then renames it into place; reads one through
    `load_tensors_only`.

    A run killed during a save keeps its previous checkpoint intact (Lightning's own writer stages the
    file in the system temp dir and moves it, which is a copy, not a rename, across file systems); a save that
    fails (a full disk) removes its temporary file. Remote paths (s3://, gs://, ...) are written by Lightning's writer.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial")
        try:
            with open(partial, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(partial, path)
        except BaseException as err:
            partial.unlink(missing_ok=True)
            if disk_full(err):
                newest = max(path.parent.glob("*.ckpt"), key=lambda p: p.stat().st_mtime, default=None)
                kept = f"the latest complete checkpoint is still '{newest}'" if newest else "no checkpoint was saved before"
                raise UserError(
                    f"the disk is full: saving checkpoint '{path}' failed and was cleaned up; {kept}: free space, then resume"
                ) from None
            raise

    def load_checkpoint(self, path, map_location: Any | None = None, weights_only: bool | None = None) -> dict[str, Any]:
        """Lightning's resume (trainer.fit(ckpt_path=...)) reads the checkpoint here: tensors and plain data only, whatever
        weights_only it asks for (it leaves it unset, which TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 would turn into a full unpickle)."""
        return load_tensors_only(Path(path), "checkpoint", "resume from an earlier checkpoint")


def disk_full(err: BaseException) -> bool:
    """Whether ``err`` or an exception it arose from is ENOSPC/EDQUOT (torch.save reports a full disk as a RuntimeError
    raised while handling the OSError)."""
    while err is not None:
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        err = err.__cause__ or err.__context__
    return False
