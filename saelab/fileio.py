"""Small file utilities every layer uses: atomic writes and content digests.

An atomic write goes to ``<name>.tmp``, is flushed and fsynced, then renamed over the final name
(atomic on POSIX) and the folder is fsynced: a crash at any moment leaves the previous complete
file or the new one, never a partial file under the final name.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

_CHUNK = 1 << 22


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open ``<path>.tmp`` for writing; on a clean exit it replaces ``path`` atomically, on an
    exception it is removed and ``path`` is left as it was."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Atomically write ``data`` as indented, key-sorted JSON."""
    with atomic_file(path, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")


def file_digest(path: str | os.PathLike, h=None) -> str:
    """blake2b (16 bytes) of a file's bytes, streamed in constant memory; pass ``h`` to hash
    several files into one digest."""
    h = h or hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()
