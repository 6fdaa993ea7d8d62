"""Read single arrays from .npz archives, memory-mapping uncompressed members.

`np.load(..., mmap_mode="r")` ignores `mmap_mode` for .npz files, which would put all of
downsampled ImageNet (1.28M images) in RAM. An `np.savez` archive stores each array as a plain
.npy file inside the zip, so we map it straight from the archive at its byte offset.
Compressed members (`np.savez_compressed`) cannot be mapped and are read into memory.
"""

from __future__ import annotations

import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np

from main.utils.errors import UserError

_HEADER_READERS = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
}


def npz_keys(path: Path) -> list[str]:
    """Names of the arrays stored in an .npz archive."""
    try:
        with zipfile.ZipFile(path) as archive:
            return [n.removesuffix(".npy") for n in archive.namelist()]
    except (zipfile.BadZipFile, OSError) as err:
        raise UserError(f"cannot read '{path}' ({err}): replace it with a valid .npz file") from None


def read_array(path: Path, key: str, mmap: bool = False) -> np.ndarray | None:
    """Array `key` of `path` (None if absent); never unpickles objects."""
    try:
        with zipfile.ZipFile(path) as archive:
            try:
                info = archive.getinfo(key + ".npy")
            except KeyError:
                return None
            if mmap and info.compress_type == zipfile.ZIP_STORED and info.file_size > 0:
                mapped = _map_member(path, info)
                if mapped is not None:
                    return mapped
            with archive.open(info) as member:
                return np.lib.format.read_array(member, allow_pickle=False)
    except (zipfile.BadZipFile, zlib.error, OSError, ValueError, EOFError) as err:  # zlib: a corrupt compressed stream
        raise UserError(f"cannot read array '{key}' of '{path}' ({err}): replace it with a valid .npz file") from None


def _map_member(path: Path, info: zipfile.ZipInfo) -> np.ndarray | None:
    """Memory-map a stored .npy member; None when its header is a kind we do not map."""
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)
        if local[:4] != b"PK\x03\x04":
            raise ValueError("broken zip entry")
        name_len, extra_len = struct.unpack("<HH", local[26:30])
        f.seek(info.header_offset + 30 + name_len + extra_len)
        reader = _HEADER_READERS.get(np.lib.format.read_magic(f))
        if reader is None:
            return None
        shape, fortran_order, dtype = reader(f)
        offset = f.tell()
    if dtype.hasobject or 0 in shape or shape == ():
        return None
    order = "F" if fortran_order else "C"
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order=order)
