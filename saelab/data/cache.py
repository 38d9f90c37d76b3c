"""The on-disk activation cache: what identifies one (the key), and reading a complete one.

A cache is a folder ``<root>/<model>--<site>-L<layer>--<split>--<key>/`` holding
``shard_00000.npy ...`` (pre-shuffled activations [rows, d_in], see ``shards.py``) and
``manifest.json``, written LAST: a folder without a manifest is an unfinished build (which the
next build resumes), never something a reader uses. The key hashes everything that changes
the activations or their order (``CacheSpec``), so a sweep reuses one cache and any change
builds a new one. Building lives in ``cache_build.py``.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from saelab.data import shards
from saelab.fileio import write_json

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
VERIFIED = "verified.json"
ENV_CACHE_DIR = "SAELAB_CACHE_DIR"
VERIFY_MODES = ("first", "always", "never")
CHUNK_BYTES = 1 << 20  # the unit of the read-time check: a CRC-32 per ~1 MiB of rows
log = logging.getLogger(__name__)


def cache_root(configured: str | os.PathLike | None = None) -> Path:
    """``data.cache_dir`` if set, else $SAELAB_CACHE_DIR, else ~/.cache/saelab/activations."""
    root = configured or os.environ.get(ENV_CACHE_DIR) or "~/.cache/saelab/activations"
    return Path(root).expanduser()


@dataclasses.dataclass(frozen=True)
class CacheSpec:
    """Everything that determines a cache's content and order: its key."""

    model: str
    revision: str | None
    weights: str  # saelab.lm.fingerprint.weights_fingerprint
    model_dtype: str  # the LM's compute dtype changes activations too
    corpus: str  # saelab.lm.corpus.fingerprint
    split: str
    context_length: int
    prepend_bos: bool
    site: str
    layer: int
    dtype: str  # storage dtype
    n_tokens: int  # the token budget
    shard_tokens: int  # the shuffle buffer: one shard's rows are shuffled together
    shuffle_seed: int

    def key_fields(self) -> dict[str, Any]:
        return {"format": FORMAT_VERSION, **dataclasses.asdict(self)}

    def key(self) -> str:
        blob = json.dumps(self.key_fields(), sort_keys=True).encode()
        return hashlib.blake2b(blob, digest_size=10).hexdigest()

    def folder_name(self) -> str:
        model = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(self.model).name or self.model)
        return f"{model}--{self.site}-L{self.layer}--{self.split}--{self.key()}"


class CacheError(RuntimeError):
    """A cache on disk is unusable; the message names the file, the problem and the fix."""


def _fix(folder: Path) -> str:
    return f"Delete the folder and rerun to rebuild it: rm -r '{folder}'"


@contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """An exclusive flock on ``<folder>/.lock``: one builder per cache at a time; a second
    process waits here, then finds the manifest and reuses the cache."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.warning("another process is building %s; waiting for it to finish", folder)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The manifest, None if the cache is not complete yet; a CacheError if it is unreadable."""
    path = folder / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
        manifest["shards"], manifest["spec"]  # required fields: a KeyError means "not a manifest"
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise CacheError(f"{path} is not a valid cache manifest ({e}). {_fix(folder)}") from None
    return manifest


class ActivationCache:
    """A complete cache, read through memory maps (never loaded whole: caches can exceed RAM).

    Opening checks that the manifest matches ``spec`` and every shard's size and shape. The
    full check (blake2b of every byte, against the manifest) runs on the first open
    (``verify="first"``, remembered in verified.json), on every open (``"always"``) or never
    (``"never"``). The full check also records a CRC-32 per chunk of rows, and with ``first`` or
    ``always`` every chunk is checked against it the first time this process reads it
    (``rows``): a byte changed after the full check is caught before it is trained on, at the
    cost of one CRC pass over what is read (docs/activation-cache.md, bench/verify.py). Every
    batch is also checked for NaN/inf (``check_finite``), whatever the mode.
    """

    def __init__(self, folder: Path, spec: CacheSpec | None = None, verify: str = "first"):
        if verify not in VERIFY_MODES:
            raise ValueError(
                f"data.verify_checksums={verify!r} is invalid: use one of {VERIFY_MODES}"
            )
        self.folder = Path(folder)
        manifest = read_manifest(self.folder)
        if manifest is None:
            raise CacheError(
                f"{self.folder} has no {MANIFEST}: the cache is incomplete. Rerun to "
                f"finish building it, or {_fix(self.folder).lower()}"
            )
        self.manifest = manifest
        if spec is not None:
            self._check_spec(spec)
        self.d_in, self.dtype = int(manifest["d_in"]), manifest["spec"]["dtype"]
        self.rows = [int(s["rows"]) for s in manifest["shards"]]
        self.offsets = np.concatenate([[0], np.cumsum(self.rows)]).astype(np.int64)
        self._maps: dict[int, np.ndarray] = {}
        self.chunk_rows = max(
            1, CHUNK_BYTES // (self.d_in * np.dtype(shards.STORAGE_DTYPES[self.dtype]).itemsize)
        )
        self._crc: list[list[int]] | None = None  # per shard, per chunk; None: no read checks
        self._checked: set[tuple[int, int]] = set()  # (shard, chunk) verified in this process
        self._verify(verify)

    def _check_spec(self, spec: CacheSpec) -> None:
        stored = self.manifest["spec"]
        expected = spec.key_fields()
        diff = {k: (stored.get(k), v) for k, v in expected.items() if stored.get(k) != v}
        if diff or self.manifest.get("key") != spec.key():
            lines = ", ".join(
                f"{k}: cache has {a!r}, config wants {b!r}" for k, (a, b) in diff.items()
            )
            raise CacheError(
                f"{self.folder / MANIFEST} does not match the config "
                f"({lines or 'key differs'}). {_fix(self.folder)}"
            )

    def _verify(self, mode: str) -> None:
        manifest_digest = shards.digest(self.folder / MANIFEST)
        record = self._record(manifest_digest)
        for entry in self.manifest["shards"]:
            path = self.folder / entry["file"]
            problem = shards.problem(path, entry, self.d_in, self.dtype, checksum=False)
            if problem:
                raise CacheError(
                    f"corrupt activation cache: {path}: {problem}. {_fix(self.folder)}"
                )
        if mode == "always" or (mode == "first" and record is None):
            record = self._full_check(manifest_digest)
        if mode != "never" and record is not None:
            self.chunk_rows = int(record["chunk_rows"])
            self._crc = [record["chunk_crc32"][e["file"]] for e in self.manifest["shards"]]

    def _full_check(self, manifest_digest: str) -> dict[str, Any]:
        """Every byte of every shard against the manifest's blake2b; returns (and records in
        verified.json) the per-chunk CRC-32s that later reads are checked against."""
        crcs = {}
        for entry in self.manifest["shards"]:
            path = self.folder / entry["file"]
            digest, crcs[entry["file"]] = shards.checksums(path, self.chunk_rows)
            if digest != entry["blake2b"]:
                raise CacheError(
                    f"corrupt activation cache: {path}: its blake2b checksum does not match the "
                    f"manifest (the bytes are corrupted). {_fix(self.folder)}"
                )
        record = {
            "manifest_blake2b": manifest_digest,
            "chunk_rows": self.chunk_rows,
            "chunk_crc32": crcs,
        }
        try:
            write_json(self.folder / VERIFIED, record)
        except OSError:  # a read-only shared cache: verify again next time, harmless
            pass
        return record

    def _record(self, manifest_digest: str) -> dict[str, Any] | None:
        """verified.json if it belongs to this manifest and covers every shard, else None."""
        try:
            record = json.loads((self.folder / VERIFIED).read_text())
            files = {e["file"] for e in self.manifest["shards"]}
            if (
                record.get("manifest_blake2b") == manifest_digest
                and int(record["chunk_rows"]) > 0
                and set(record["chunk_crc32"]) >= files
            ):
                return record
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            pass
        return None

    # --- verified reads ------------------------------------------------------------------
    def rows_of(self, index: int, lo: int, hi: int) -> np.ndarray:
        """Rows ``[lo, hi)`` of shard ``index`` (a memory-map slice, storage dtype), after
        checking the CRC-32 of every chunk they touch that this process has not read yet."""
        array = self.shard(index)
        if self._crc is not None and hi > lo:
            r = self.chunk_rows
            for chunk in range(lo // r, (hi - 1) // r + 1):
                if (index, chunk) not in self._checked:
                    self._check_chunk(index, chunk)
        return array[lo:hi]

    def _check_chunk(self, index: int, chunk: int) -> None:
        crc = shards.chunk_crc32(self.shard(index), chunk, self.chunk_rows)
        if crc != self._crc[index][chunk]:
            entry = self.manifest["shards"][index]
            path = self.folder / entry["file"]
            # A wrong record must not condemn a good shard: the manifest's digest decides.
            if shards.digest(path) == entry["blake2b"]:
                self._crc[index] = shards.checksums(path, self.chunk_rows)[1]
                self._checked.add((index, chunk))
                return
            lo = chunk * self.chunk_rows
            hi = min(lo + self.chunk_rows, self.rows[index])
            raise CacheError(
                f"corrupt activation cache: {path}: rows {lo}..{hi - 1} do not "
                f"match their checksum (the file changed after it was verified). {_fix(self.folder)}"
            )
        self._checked.add((index, chunk))

    def check_finite(self, out: np.ndarray, pieces: list[tuple[int, int, int]]) -> None:
        """Raise a CacheError naming the shard and rows if ``out`` (float32, filled from
        ``pieces`` = (shard, first row, row count) in order) holds NaN/inf. One reduction when
        all is well: a sum is non-finite whenever an entry is (overflowing finite values only
        cost a second, exact look)."""
        if np.isfinite(out.sum()):
            return
        at = 0
        for index, lo, n in pieces:
            bad = np.flatnonzero(~np.isfinite(out[at : at + n]).all(axis=1))
            if len(bad):
                path = self.folder / self.manifest["shards"][index]["file"]
                rows = ", ".join(str(lo + int(i)) for i in bad[:5])
                raise CacheError(
                    f"non-finite activations (NaN/inf) in the activation cache: {path}, row(s) "
                    f"{rows}{' ...' if len(bad) > 5 else ''} of {self.folder}. The build never "
                    "stores NaN/inf, so the file changed after it was built (with "
                    "data.verify_checksums=never nothing compares it with its checksum). "
                    f"{_fix(self.folder)}"
                )
            at += n

    # --- reading ------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def key(self) -> str:
        return self.manifest["key"]

    @property
    def mean_squared_norm(self) -> float:
        return float(self.manifest["mean_squared_norm"])

    def shard(self, index: int) -> np.ndarray:
        """Shard ``index`` as a read-only memory map [rows, d_in] (storage dtype)."""
        if index not in self._maps:
            path = self.folder / self.manifest["shards"][index]["file"]
            self._maps[index] = np.load(path, mmap_mode="r", allow_pickle=False)
        return self._maps[index]

    def read(self, start: int, stop: int) -> Tensor:
        """Rows [start, stop) of the cache in stored order, as float32 [stop - start, d_in]."""
        start, stop = max(0, start), min(stop, len(self))
        out = np.empty((max(0, stop - start), self.d_in), dtype=np.float32)
        first = int(np.searchsorted(self.offsets, start, side="right")) - 1
        pos, index, pieces = start, first, []
        while pos < stop:
            lo, hi = (
                pos - self.offsets[index],
                min(stop, self.offsets[index + 1]) - self.offsets[index],
            )
            shards.decode_into(
                out[pos - start : pos - start + hi - lo], self.rows_of(index, lo, hi), self.dtype
            )
            pieces.append((index, int(lo), int(hi - lo)))
            pos += hi - lo
            index += 1
        self.check_finite(out, pieces)
        return torch.from_numpy(out)
