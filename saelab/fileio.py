"""Small file utilities every layer uses: atomic writes, strict JSON and content digests.

An atomic write goes to ``<name>.tmp``, is flushed and fsynced, then renamed over the final name
(atomic on POSIX) and the folder is fsynced: a crash at any moment leaves the previous complete
file or the new one, never a partial file under the final name. A write that fails (a full disk,
a file-size limit) raises an ``OSError`` naming the file, and leaves no ``.tmp`` behind.

JSON is strict: ``NaN`` and ``Infinity`` are not JSON and many readers reject them, so
``write_json`` refuses them (``finite_or_null`` turns the non-finite numbers of a metrics dict
into ``null`` and records which and why).
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

_CHUNK = 1 << 22
NON_FINITE_KEY = "non_finite"


def fsync_path(path: str | os.PathLike) -> None:
    """fsync a file or a folder (its entries) that already exists: a file another library wrote
    and closed without one, or the folder a file was just renamed into."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class WriteError(OSError):
    """Writing a file failed; the message names the file, the cause and what was left."""


def write_error(path: Path, error: BaseException) -> WriteError:
    """A ``WriteError`` naming ``path`` for a failed write (keeps the errno when there is one)."""
    code = getattr(error, "errno", None)
    cause = os.strerror(code) if code else f"{type(error).__name__}: {error}"
    hint = ""
    if code in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT) or "write failed" in str(error):
        hint = " Free disk space (or raise the file-size limit / quota) and rerun."
    return WriteError(
        code or errno.EIO,
        f"could not write {path}: {cause}. Nothing was written under that name (the previous "
        f"file, if any, is unchanged).{hint}",
    )


@contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open ``<path>.tmp`` for writing; on a clean exit it replaces ``path`` atomically, on an
    exception it is removed and ``path`` is left as it was. A failed write raises a
    ``WriteError`` naming ``path``."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        tmp.unlink(missing_ok=True)
        if isinstance(error, WriteError) or not _is_write_failure(error):
            raise
        raise write_error(path, error) from error
    fsync_path(path.parent)


@contextmanager
def atomic_folder(folder: str | os.PathLike) -> Iterator[Path]:
    """A temporary folder beside ``folder`` to write into; on a clean exit its files and itself
    are fsynced and it replaces ``folder`` (whole or not at all), on an exception it is
    removed and ``folder`` is left as it was."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        yield tmp
        for path in tmp.iterdir():
            fsync_path(path)
        fsync_path(tmp)  # every file on disk before the folder takes its name
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
        fsync_path(folder.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _is_write_failure(error: BaseException) -> bool:
    # torch.save reports a failed write as a RuntimeError ("... file write failed").
    return isinstance(error, OSError) or (
        isinstance(error, RuntimeError) and "write failed" in str(error)
    )


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Atomically write ``data`` as indented, key-sorted, strict JSON: a NaN or infinity
    anywhere raises ``ValueError`` naming the file and the key (nothing is written)."""
    try:
        text = json.dumps(data, indent=2, sort_keys=True, allow_nan=False)
    except ValueError:
        where = ", ".join(non_finite_keys(data)) or "a value"
        raise ValueError(
            f"refusing to write {path}: {where} is not a finite number, and NaN/Infinity are not "
            "JSON. Pass the numbers through saelab.fileio.finite_or_null (null plus a reason) "
            "or fix what produced them"
        ) from None
    with atomic_file(path, "w") as f:
        f.write(text + "\n")


def non_finite_keys(data: Any, prefix: str = "") -> list[str]:
    """Dotted keys of every non-finite float in nested dicts/lists."""
    if isinstance(data, float):
        return [] if math.isfinite(data) else [prefix or "<value>"]
    if isinstance(data, dict):
        items = data.items()
    elif isinstance(data, (list, tuple)):
        items = enumerate(data)
    else:
        return []
    out = []
    for key, value in items:
        out += non_finite_keys(value, f"{prefix}.{key}" if prefix else str(key))
    return out


def finite_or_null(metrics: dict[str, Any], reason: str) -> dict[str, Any]:
    """``metrics`` with every non-finite number replaced by ``None`` and listed, with
    ``reason`` and the value, under ``"non_finite"``: a metric that is undefined (e.g. a ratio
    whose denominator is zero) stays visible as such instead of breaking strict JSON."""
    out, bad = {}, {}
    for key, value in metrics.items():
        if isinstance(value, float) and not math.isfinite(value):
            out[key], bad[key] = None, f"{value!r}: {reason}"
        else:
            out[key] = value
    if bad:
        out[NON_FINITE_KEY] = {**out.get(NON_FINITE_KEY, {}), **bad}
    return out


def file_digest(path: str | os.PathLike, h=None) -> str:
    """blake2b (16 bytes) of a file's bytes, streamed in constant memory; pass ``h`` to hash
    several files into one digest."""
    h = h or hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


class HashingWriter:
    """A write-only file wrapper that hashes what passes through it (one pass: write and
    checksum). Enough of a file for ``np.save`` and ``torch.save``."""

    def __init__(self, f: IO[bytes], h=None):
        self.f, self.h = f, h or hashlib.blake2b(digest_size=16)
        self.error: OSError | None = None  # the OS's reason if a write failed

    def write(self, data) -> int:
        self.h.update(data)
        try:
            n = self.f.write(data)
            if n is not None and n < memoryview(data).nbytes:
                self.f.flush()  # a short write: flushing raises the OS's reason (disk full)
            return n
        except OSError as error:
            # Kept because torch.save reports a failed write as its own RuntimeError.
            self.error = error
            raise

    def flush(self) -> None:
        self.f.flush()

    def hexdigest(self) -> str:
        return self.h.hexdigest()


def unreadable_reason(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be read as a regular file (a symbolic link that loops or whose
    target is gone, as on an unmounted disk; a folder; a permission), or None when it can.
    Folders of data list their files with this so that nothing is skipped silently."""
    path = Path(path)
    try:
        os.stat(path)
    except OSError as error:
        if error.errno == errno.ELOOP:
            return "a symbolic link that loops (it points, directly or not, to itself)"
        if path.is_symlink():
            return f"a dangling symbolic link: its target {os.readlink(path)} does not exist"
        return f"unreadable ({error.strerror})"
    if not path.is_file():
        return "not a regular file"
    if not os.access(path, os.R_OK):
        return "unreadable (permission denied)"
    return None


def unreadable_files(root: Path, files: list[Path], most: int = 8) -> str | None:
    """None when every one of ``files`` (under the folder ``root``) can be read, else how many
    cannot and why for the first ``most`` of them (paths relative to ``root``): folders of data
    refuse to go on without some of their files, which would quietly change the data."""
    bad = [(p, why) for p in files if (why := unreadable_reason(p))]
    if not bad:
        return None
    listing = "; ".join(f"{p.relative_to(root)} is {why}" for p, why in bad[:most])
    return f"{len(bad)} of its {len(files)} file(s) cannot be read ({listing})"
