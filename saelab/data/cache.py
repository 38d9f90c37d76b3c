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

    Opening checks that the manifest matches ``spec`` and every shard's size and shape; the
    full blake2b check runs on first open (``verify="first"``, remembered in verified.json),
    on every open (``"always"``) or never (``"never"``).
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
        marker = self.folder / VERIFIED
        manifest_digest = shards.digest(self.folder / MANIFEST)
        checksum = mode == "always" or (
            mode == "first" and not self._marked(marker, manifest_digest)
        )
        for entry in self.manifest["shards"]:
            path = self.folder / entry["file"]
            problem = shards.problem(path, entry, self.d_in, self.dtype, checksum)
            if problem:
                raise CacheError(
                    f"corrupt activation cache: {path}: {problem}. {_fix(self.folder)}"
                )
        if checksum:
            try:
                write_json(marker, {"manifest_blake2b": manifest_digest})
            except OSError:  # a read-only shared cache: verify again next time, harmless
                pass

    @staticmethod
    def _marked(marker: Path, manifest_digest: str) -> bool:
        try:
            return json.loads(marker.read_text()).get("manifest_blake2b") == manifest_digest
        except (OSError, json.JSONDecodeError):
            return False

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
        pos, index = start, first
        while pos < stop:
            lo, hi = (
                pos - self.offsets[index],
                min(stop, self.offsets[index + 1]) - self.offsets[index],
            )
            shards.decode_into(
                out[pos - start : pos - start + hi - lo], self.shard(index)[lo:hi], self.dtype
            )
            pos += hi - lo
            index += 1
        return torch.from_numpy(out)
