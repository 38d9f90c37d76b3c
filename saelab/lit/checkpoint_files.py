"""Checkpoint files on disk: checksummed when written, the previous good one kept, verified
before they are trusted.

- Every checkpoint (a file, or a folder under ``trainer=fsdp``) is hashed (blake2b) as it is
  written; its digest goes into ``checkpoints/digests.json`` BEFORE the file takes its final
  name, so any ``last.ckpt`` a reader can see has its digest on record. The registry keeps the
  last few digests: a checkpoint is good when its bytes hash to one of them.
- Committing a new ``last.ckpt`` first renames the current one to ``previous.ckpt`` (if it
  verifies; a corrupt one is set aside as ``last.ckpt.corrupt`` instead, so a good previous is
  never replaced by a bad one), then renames the new file in. A crash between the two renames
  leaves ``previous.ckpt`` and no ``last.ckpt``: resume takes the previous one.
- ``find_checkpoint`` returns the newest candidate that verifies (last, then previous), warning
  when it falls back; when every candidate fails it raises ``CheckpointError`` naming each file
  and the fix. Falling back costs only time: resume is exact, so the run ends with the same
  weights as if it had never been interrupted.

Checkpoints written before digests existed (no ``digests.json``) are accepted with a warning
(and still checked for non-finite weights when loaded). A ``digests.json`` that exists but is
unreadable or malformed is a ``CheckpointError``: nothing in that folder is loaded, and no save
rotates its checkpoints.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from saelab.fileio import file_digest, fsync_path, write_json

log = logging.getLogger(__name__)

LAST = "last.ckpt"
PREVIOUS = "previous.ckpt"
DIGESTS = "digests.json"
METADATA = "meta.pt"  # Lightning's name for the non-tensor part of a sharded (folder) checkpoint
KEEP_DIGESTS = 4  # last, previous, and room for a commit interrupted between its steps

OK, UNCHECKED = "ok", "unchecked"


class CheckpointError(RuntimeError):
    """A checkpoint cannot be trusted; the message names the file(s), the problem and the fix."""


# --- digests ---------------------------------------------------------------------------------
def digest_of(path: Path) -> str:
    """blake2b of a checkpoint file, or of every file of a folder checkpoint (names and bytes)."""
    path = Path(path)
    if not path.is_dir():
        return file_digest(path)
    h = hashlib.blake2b(digest_size=16)
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f"{file.relative_to(path).as_posix()}\0{file.stat().st_size}\0".encode())
        file_digest(file, h)
    return h.hexdigest()


def _registry(folder: Path) -> list[dict[str, Any]] | None:
    """The recorded digests, newest first; None when the folder has none (older saelab).

    A registry that exists but cannot be read, or does not hold what saelab writes, is a
    ``CheckpointError``: treating it as absent would load a tampered checkpoint unverified
    and rotate the good one away at the next save."""
    path = Path(folder) / DIGESTS
    if not path.exists() and not path.is_symlink():
        return None
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))["checkpoints"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise _registry_error(path, f"it is unreadable ({type(e).__name__}: {e})") from None
    if not isinstance(entries, list):
        raise _registry_error(path, '"checkpoints" is not a list')
    for i, entry in enumerate(entries):
        digest = entry.get("blake2b") if isinstance(entry, dict) else None
        if not (isinstance(digest, str) and _is_hex(digest)):
            raise _registry_error(path, f"entry {i} has no blake2b digest ({entry!r:.80})")
    return entries


def _is_hex(text: str) -> bool:
    return bool(text) and all(c in "0123456789abcdef" for c in text)


def _registry_error(path: Path, problem: str) -> CheckpointError:
    return CheckpointError(
        f"{path}: {problem}, so no checkpoint in {path.parent} can be verified and none is "
        "loaded or replaced. Restore the file from a backup, start the run again in a new "
        f"folder, or delete {path.parent} to restart this run from step 0"
    )


def check_registry(folder: Path) -> None:
    """Raise ``CheckpointError`` now if the folder's registry is damaged (before a save spends
    time writing a checkpoint that could not be committed)."""
    _registry(folder)


def record_digest(folder: Path, digest: str, step: int | None) -> None:
    """Add ``digest`` to the folder's registry (atomically), keeping the newest few."""
    entries = _registry(folder) or []
    entries = [{"blake2b": digest, "global_step": step}] + [
        e for e in entries if e["blake2b"] != digest
    ]
    write_json(Path(folder) / DIGESTS, {"checkpoints": entries[:KEEP_DIGESTS]})


# What this process knows to be good without hashing again: path -> (inode, size, mtime) of
# the file, or of every file of a folder checkpoint.
_VERIFIED: dict[str, tuple] = {}


def _signature(path: Path) -> tuple:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    stats = [(str(f), f.stat()) for f in files]
    return tuple((name, st.st_ino, st.st_size, st.st_mtime_ns) for name, st in stats)


def remember_good(path: Path) -> None:
    _VERIFIED[str(Path(path).resolve())] = _signature(Path(path))


def is_complete(path: Path) -> bool:
    path = Path(path)
    return path.is_file() or (path / METADATA).is_file()


def verify(path: Path) -> str:
    """``OK`` (its digest is on record), ``UNCHECKED`` (no registry: an older checkpoint), or
    what is wrong with it."""
    path = Path(path)
    key = str(path.resolve())
    # The registry first, even for a file this process verified: a damaged registry means
    # the folder can no longer be trusted, whatever was checked before.
    entries = _registry(path.parent)
    if entries is None:
        return UNCHECKED
    try:
        if _VERIFIED.get(key) == _signature(path):
            return OK
    except OSError:
        pass
    try:
        digest = digest_of(path)
    except OSError as e:
        return f"it cannot be read ({e})"
    if any(e["blake2b"] == digest for e in entries):
        _VERIFIED[key] = _signature(path)
        return OK
    return (
        f"its blake2b checksum matches none recorded in {path.parent / DIGESTS} (the file is "
        "truncated or its bytes were changed after it was written)"
    )


# --- committing a new checkpoint ---------------------------------------------------------
def previous_path(path: Path) -> Path:
    path = Path(path)
    return path.with_name(PREVIOUS if path.name == LAST else path.name + ".previous")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _retire(path: Path) -> None:
    """Move the current checkpoint out of the way: to the previous slot when it verifies, aside
    (``<name>.corrupt``) when it does not."""
    if not path.exists():
        return
    status = verify(path) if is_complete(path) else "it is incomplete"
    if status == UNCHECKED:  # an older saelab's checkpoint, accepted on resume: adopt it
        record_digest(path.parent, digest_of(path), None)
        status = OK
    target = previous_path(path) if status == OK else path.with_name(path.name + ".corrupt")
    if status != OK:
        log.warning("%s is corrupt (%s): kept as %s for inspection", path, status, target.name)
    _remove(target)
    os.replace(path, target)
    if status == OK:
        remember_good(target)


def commit(tmp: Path, path: Path, digest: str, step: int | None) -> None:
    """Make the complete, fsynced ``tmp`` (file or folder) the checkpoint ``path``: record its
    digest, rotate the current one to the previous slot, rename ``tmp`` in."""
    tmp, path = Path(tmp), Path(path)
    try:
        record_digest(path.parent, digest, step)
    except CheckpointError:  # a damaged registry: the folder is left exactly as it was
        _remove(tmp)
        raise
    _retire(path)
    os.replace(tmp, path)
    fsync_path(path.parent)
    remember_good(path)


# --- finding the checkpoint a run continues from --------------------------------------------
def candidates(checkpoint: Path) -> list[Path]:
    """Where a run's checkpoint may be, newest first: ``last.ckpt``; ``last.ckpt.old`` (a
    sharded checkpoint of an older saelab interrupted while being swapped in); the previous."""
    checkpoint = Path(checkpoint)
    return [checkpoint, checkpoint.with_name(checkpoint.name + ".old"), previous_path(checkpoint)]


def find_verified(checkpoint: Path) -> Path | None:
    """The newest candidate of ``checkpoint`` that verifies; None if there is none at all; a
    ``CheckpointError`` naming every file when all that exist are corrupt."""
    bad: list[tuple[Path, str]] = []
    for path in candidates(checkpoint):
        if not is_complete(path):
            continue
        status = verify(path)
        if status in (OK, UNCHECKED):
            for corrupt, problem in bad:
                log.warning(
                    "%s is corrupt (%s): resuming from %s instead (resume is exact: the run "
                    "ends as if uninterrupted, it only repeats the steps since then)",
                    corrupt,
                    problem,
                    path,
                )
            if status == UNCHECKED:
                log.warning(
                    "%s has no recorded checksum (written by an older saelab): loading it "
                    "unverified",
                    path,
                )
            return path
        bad.append((path, status))
    if not bad:
        return None
    listing = "; ".join(f"{p}: {problem}" for p, problem in bad)
    raise CheckpointError(
        f"no usable checkpoint in {Path(checkpoint).parent}: {listing}. Start the run again "
        f"in a new folder, or delete {Path(checkpoint).parent} to restart this one from step 0 "
        "(or restore the files from a backup)"
    )


# --- what a loaded checkpoint must not hold -----------------------------------------------
def non_finite_tensors(checkpoint: dict[str, Any]) -> list[str]:
    """Names of floating tensors with NaN/inf among the weights and optimiser states."""
    named: list[tuple[str, Any]] = list(checkpoint.get("state_dict", {}).items())
    for i, optimizer in enumerate(checkpoint.get("optimizer_states", [])):
        for param, state in optimizer.get("state", {}).items():
            named += [(f"optimizer {i} param {param} {k}", v) for k, v in state.items()]
    bad = []
    for name, value in named:
        if not (isinstance(value, torch.Tensor) and value.is_floating_point()):
            continue
        local = value.to_local() if hasattr(value, "to_local") else value
        if not bool(torch.isfinite(local).all()):
            bad.append(name)
    return bad
