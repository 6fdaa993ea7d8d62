"""Arrays computed from a data set (Inception features of a FID reference), cached on disk as plain .npz.

Nothing here can run code: files are numeric arrays read with ``allow_pickle=False``. Each file stores the
full key it was computed for and is checked against it on every read, so a moved, stale, damaged or planted
file is recomputed, never trusted. Long extractions are written in chunks, so an interrupted one resumes.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

CHUNK = 5_000  # images per resumable part


def _encode(key: dict) -> str:
    return json.dumps(key, sort_keys=True)


def write_npz(path: Path, key: dict, arrays: dict[str, np.ndarray]) -> None:
    """Write under a temporary name, then rename: a killed run never leaves a half-written file under the real name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.stem}.{os.getpid()}.partial.npz")
    np.savez(partial, __key__=np.array(_encode(key)), **arrays)
    os.replace(partial, path)


def read_npz(path: Path, key: dict, names: list[str], count: int) -> dict[str, np.ndarray] | None:
    """The arrays if ``path`` holds exactly them for ``key`` (float arrays of ``count`` rows); None otherwise."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as archive:
            if str(archive["__key__"]) != _encode(key):
                raise ValueError("it was computed for other settings")
            arrays = {name: archive[name] for name in names}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        print(
            f"ignoring cache file '{path}' ({str(err).splitlines()[0] if str(err) else type(err).__name__}): recomputing", file=sys.stderr
        )
        return None
    if any(a.dtype.kind != "f" or a.ndim != 2 or len(a) != count or not np.isfinite(a).all() for a in arrays.values()):
        print(f"ignoring cache file '{path}' (wrong shape or values): recomputing", file=sys.stderr)
        return None
    return arrays


class FeatureCache:
    """A folder of verified .npz files, one per (name, key)."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser()

    def get_or_build(
        self, name: str, key: dict, names: list[str], count: int, compute: Callable[[list[int]], dict[str, np.ndarray]]
    ) -> dict[str, np.ndarray]:
        """Arrays ``names`` (``count`` rows each) for ``key``; ``compute(indices)`` makes the rows of a chunk on a miss."""
        final = self.root / f"{name}.npz"
        arrays = read_npz(final, key, names, count)
        if arrays is not None:
            return arrays
        parts_dir = self.root / f".{name}.parts"
        chunks = []
        for start in range(0, count, CHUNK):
            indices = list(range(start, min(start + CHUNK, count)))
            part_key = key | {"rows": [indices[0], indices[-1] + 1]}
            part = parts_dir / f"part-{start:09d}.npz"
            chunk = read_npz(part, part_key, names, len(indices)) if count > CHUNK else None
            if chunk is None:
                chunk = compute(indices)
                if count > CHUNK:
                    write_npz(part, part_key, chunk)
            chunks.append(chunk)
        arrays = {n: np.concatenate([c[n] for c in chunks]).astype(np.float32, copy=False) for n in names}
        write_npz(final, key, arrays)
        shutil.rmtree(parts_dir, ignore_errors=True)
        return arrays
