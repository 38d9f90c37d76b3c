"""Shard files of an activation cache: raw ``.npy`` arrays [rows, d_in], written atomically.

``.npy`` is a fixed header plus the raw array, so ``np.load(mmap_mode="r")`` maps it without
reading it and no reader ever unpickles anything (``allow_pickle=False`` everywhere). bfloat16
has no numpy dtype: it is stored as its raw 16 bits (uint16), which ARE the top half of the
float32 bits, so decoding is an exact shift.

Every write goes to ``<name>.tmp``, is fsynced, then renamed over the final name (atomic on
POSIX), then the folder is fsynced: a crash leaves either the old state or the complete new
file, never a partial file under a final name.
"""

from __future__ import annotations

import hashlib
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from saelab.fileio import HashingWriter, atomic_file, file_digest

STORAGE_DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}


def check_dtype(dtype: str) -> None:
    if dtype not in STORAGE_DTYPES:
        raise ValueError(
            f"data.dtype={dtype!r} is invalid: use one of {', '.join(STORAGE_DTYPES)}."
        )


def encode(x: Tensor, dtype: str) -> np.ndarray:
    """float tensor [n, d] -> the numpy array stored on disk."""
    check_dtype(dtype)
    x = x.detach().cpu()
    if dtype == "bfloat16":
        return x.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    return x.to(getattr(torch, dtype)).numpy()


def decode_into(out: np.ndarray, stored: np.ndarray, dtype: str) -> None:
    """Write ``stored`` (a slice of a shard, possibly memory-mapped) into float32 ``out``.

    One pass, no temporaries for float32/float16; bfloat16 -> float32 is the 16-bit pattern
    shifted into the high half of a 32-bit word (exact).
    """
    if dtype == "bfloat16":
        bits = out.view(np.uint32)
        np.copyto(bits, stored, casting="safe")
        np.left_shift(bits, 16, out=bits)
    else:
        np.copyto(out, stored, casting="safe")


def decode(stored: np.ndarray, dtype: str) -> Tensor:
    out = np.empty(stored.shape, dtype=np.float32)
    decode_into(out, stored, dtype)
    return torch.from_numpy(out)


def write_array(path: Path, array: np.ndarray) -> dict[str, Any]:
    """Atomically write ``array`` as .npy; returns {file, rows, bytes, blake2b}."""
    path = Path(path)
    h = hashlib.blake2b(digest_size=16)
    with atomic_file(path) as f:
        np.lib.format.write_array(
            HashingWriter(f, h), np.ascontiguousarray(array), allow_pickle=False
        )
    return {
        "file": path.name,
        "rows": int(array.shape[0]),
        "bytes": path.stat().st_size,
        "blake2b": h.hexdigest(),
    }


def digest(path: Path) -> str:
    return file_digest(path)


def checksums(path: Path, chunk_rows: int) -> tuple[str, list[int]]:
    """One read of a shard file: the blake2b of all its bytes, and the CRC-32 of each chunk of
    ``chunk_rows`` rows of its data (what ``chunk_crc32`` recomputes on a read)."""
    array = np.load(path, mmap_mode="r", allow_pickle=False)
    row_bytes = int(np.prod(array.shape[1:], dtype=np.int64)) * array.itemsize
    h, crcs = hashlib.blake2b(digest_size=16), []
    with open(path, "rb") as f:
        h.update(f.read(array.offset))
        while data := f.read(chunk_rows * row_bytes):
            h.update(data)
            crcs.append(zlib.crc32(data))
    return h.hexdigest(), crcs


def chunk_crc32(array: np.ndarray, chunk: int, chunk_rows: int) -> int:
    """CRC-32 of rows ``[chunk * chunk_rows, (chunk + 1) * chunk_rows)`` of a (memory-mapped)
    shard: the bytes as stored, so any flipped bit shows, whatever the dtype."""
    return zlib.crc32(np.ascontiguousarray(array[chunk * chunk_rows : (chunk + 1) * chunk_rows]))


def problem(path: Path, entry: dict[str, Any], d_in: int, dtype: str, checksum: bool) -> str | None:
    """What is wrong with a shard file compared with its manifest entry, or None if nothing."""
    if not path.is_file():
        return "the file is missing"
    size = path.stat().st_size
    if size != entry["bytes"]:
        return f"it has {size} bytes, the manifest says {entry['bytes']} (truncated or overwritten)"
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as e:
        return f"it is not a readable .npy file ({e})"
    expected = (entry["rows"], d_in)
    if array.shape != expected or array.dtype != np.dtype(STORAGE_DTYPES[dtype]):
        return f"it holds {array.dtype}{list(array.shape)}, expected {np.dtype(STORAGE_DTYPES[dtype])}{list(expected)}"
    if checksum and digest(path) != entry["blake2b"]:
        return "its blake2b checksum does not match the manifest (the bytes are corrupted)"
    return None
