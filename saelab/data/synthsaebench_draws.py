"""Stored draws of SynthSAEBench training batches (``data.stored_batches``): the first N batches
of a split drawn once into saelab's cache and read back, bit for bit, by every later run.

Drawing is what bounds SynthSAEBench on a CPU (docs/synthsaebench.md): one batch of 1,024
samples of the 16k model costs more than the SAE step that trains on it. Benchmarks train many
SAEs on the very same batches, so drawing them once and reading them from disk leaves each run
with only its own compute. A stored batch is exactly the batch ``SynthSAEBenchBatches`` draws:
the same bytes.

Layout: ``<cache root>/synthsaebench/<model key>.draws/<split>-seed<seed>-batch<B>.f32`` (raw
float32, row-major ``[n_batches * B, d_in]``) beside a ``.json`` manifest with the model key,
seed, split, shape and the file's digest. The data file is written atomically and the manifest
after it, so a half-written store has no manifest and is never read. Opening a store checks the
manifest, the file's size and digest, and that batch 0 drawn afresh equals batch 0 stored (a
different SAELens sampler would draw different batches).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from saelab.fileio import HashingWriter, atomic_file, file_digest, write_json

log = logging.getLogger(__name__)


class StoredDraws:
    """Read-only view of a store's batches, after its checks have passed."""

    def __init__(self, path: Path, n_batches: int, batch_size: int, d_in: int):
        self.path, self.n_batches, self.batch_size = path, n_batches, batch_size
        self.rows = np.memmap(
            path, dtype=np.float32, mode="r", shape=(n_batches * batch_size, d_in)
        )

    def __len__(self) -> int:
        return self.n_batches

    def __getitem__(self, index: int) -> Tensor:
        start = index * self.batch_size
        return torch.from_numpy(np.array(self.rows[start : start + self.batch_size]))


def store_path(model_folder: Path, split: str, seed: int, batch_size: int) -> Path:
    return model_folder.with_name(model_folder.name + ".draws") / (
        f"{split}-seed{seed}-batch{batch_size}.f32"
    )


def _manifest(path: Path) -> Path:
    return path.with_suffix(".json")


def open_or_write(batches, model_key: str, path: Path, n_batches: int) -> StoredDraws:
    """The first ``n_batches`` of ``batches`` (a ``SynthSAEBenchBatches``) from the store at
    ``path``, drawing and writing them first when the store is missing or holds fewer."""
    n_batches = min(n_batches, len(batches))
    held = _held_batches(path)
    if held is None or held < n_batches:
        write(batches, model_key, path, n_batches)
    return check(batches, model_key, path, n_batches)


def _held_batches(path: Path) -> int | None:
    try:
        return int(json.loads(_manifest(path).read_text())["n_batches"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write(batches, model_key: str, path: Path, n_batches: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    _manifest(path).unlink(missing_ok=True)  # the old data is not complete from here on
    d_in = None
    with atomic_file(path) as f:
        out = HashingWriter(f)
        for g in tqdm(range(n_batches), desc=f"Storing SynthSAEBench draws ({path.name})"):
            x = batches[g].detach().cpu().to(torch.float32).contiguous()
            d_in = x.shape[1]
            out.write(x.numpy().tobytes())
        digest = out.hexdigest()
    write_json(
        _manifest(path),
        {
            "model_key": model_key,
            "split": batches.split,
            "seed": batches.seed,
            "batch_size": batches.batch_size,
            "n_batches": n_batches,
            "d_in": d_in,
            "digest": digest,
        },
    )
    log.info("Stored %d SynthSAEBench batches in %s", n_batches, path)


def check(batches, model_key: str, path: Path, n_batches: int) -> StoredDraws:
    fix = f"delete {path} and {_manifest(path).name} to draw them again"
    try:
        m = json.loads(_manifest(path).read_text())
        expected = {
            "model_key": model_key,
            "split": batches.split,
            "seed": batches.seed,
            "batch_size": batches.batch_size,
        }
        held, d_in, digest = int(m["n_batches"]), int(m["d_in"]), str(m["digest"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{_manifest(path)} is unreadable ({error}); {fix}") from None
    if {k: m.get(k) for k in expected} != expected or held < n_batches:
        raise ValueError(
            f"{_manifest(path)} describes other draws ({m}) than the run's {expected} with "
            f"{n_batches} batches; {fix}"
        )
    size = held * batches.batch_size * d_in * 4
    if not path.is_file() or path.stat().st_size != size or file_digest(path) != digest:
        raise ValueError(
            f"{path} is missing, truncated or does not match its digest: the stored draws are "
            f"damaged; {fix}"
        )
    stored = StoredDraws(path, held, batches.batch_size, d_in)
    if not torch.equal(stored[0], batches[0]):
        raise ValueError(
            f"{path} holds batches that differ from the ones this SAELens draws (another "
            f"sae-lens version, or another sampler); {fix}"
        )
    stored.n_batches = n_batches
    return stored
