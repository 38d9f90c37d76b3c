"""Train on activation files you already have: ``data=files data.path=PATH``, or
``saelab.data.ActivationFiles(path, batch_size=...)`` in a notebook (docs/interop.md).

The files (``rowfiles.py``: .npy, .safetensors or weights-only .pt of float rows
``[tokens, d_in]``, or a folder of them) are one memory-mapped table; ``d_in`` is read from it.
The last rows are held out for validation (``val_tokens``, or ``val_fraction`` of the rows), so
the split is the same on every run and rank. Training batches are contiguous blocks of rows in a
seeded per-epoch order, as from the cache (``batches.py``): batch g of an epoch is blocks
``order[g*k : (g+1)*k]``, so w DDP ranks with batch B read what one process with batch w*B reads,
and the position is saved in checkpoints (``stream.py``, ``base.py``). Unlike the cache, the rows
are in the user's order, which is why blocks are shuffled across the whole table every epoch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from saelab.data.base import ActivationSource
from saelab.data.rowfiles import RowTable
from saelab.data.stream import BatchStream


def data_width(path: str, key: str | None = None) -> int:
    """d_in of the activation files at ``path`` (read from their headers; the ``data=files``
    config fills ``data.d_in``, and with it ``sae.d_in``, from this)."""
    return RowTable(path, key or None).d_in


@dataclass
class FilesDataConfig:
    path: str
    """A .npy, .safetensors or .pt file of float rows [tokens, d_in], or a folder of them
    (shards, read in name order)."""
    key: str | None = None
    """The tensor to read from a .safetensors file or a dict saved in a .pt file, when there
    are several."""
    d_in: int | None = None
    """Read from the files (null); if given, it must match them."""
    batch_size: int = 4096
    val_fraction: float = 0.05
    """Fraction of the rows (the last ones) held out for validation."""
    val_tokens: int | None = None
    """Rows held out for validation (the last ones); overrides val_fraction."""
    block_size: int = 512
    """Rows per contiguous read; a batch is batch_size/block_size blocks from anywhere."""
    seed: int = 0
    """Order of blocks per epoch."""
    prefetch_batches: int = 2
    model_name: str | None = None
    """Written into the exported SAE's cfg.json when given (SAELens and SAEBench read it)."""
    hook_name: str | None = None
    """Where the activations were read, in TransformerLens's names (e.g.
    blocks.8.hook_resid_post); written into the export when given."""
    hook_layer: int | None = None

    def __post_init__(self) -> None:
        checks = {
            "batch_size": self.batch_size > 0,
            "block_size": self.block_size > 0,
            "val_fraction": 0 < self.val_fraction < 1,
            "val_tokens": self.val_tokens is None or self.val_tokens > 0,
            "prefetch_batches": self.prefetch_batches >= 0,
        }
        for key, ok in checks.items():
            if not ok:
                raise ValueError(
                    f"data.{key}={getattr(self, key)!r} is invalid: sizes must be positive and "
                    "val_fraction in (0, 1)."
                )
        table = RowTable(self.path, self.key)
        if self.d_in is None:
            self.d_in = table.d_in
        elif self.d_in != table.d_in:
            raise ValueError(
                f"data.d_in={self.d_in} but {self.path} holds {table.d_in}-wide rows; drop "
                "data.d_in (it is read from the files)."
            )
        n_val = self.validation_rows(table.rows)
        if not 0 < n_val < table.rows:
            raise ValueError(
                f"data.val_tokens={n_val} must leave training rows: {self.path} holds "
                f"{table.rows:,} rows."
            )
        if table.rows - n_val < self.batch_size:
            raise ValueError(
                f"{self.path} holds {table.rows:,} rows, {n_val:,} of them held out for "
                f"validation: fewer than one training batch of data.batch_size={self.batch_size}. "
                "Lower data.batch_size or data.val_tokens / data.val_fraction."
            )

    def validation_rows(self, rows: int) -> int:
        if self.val_tokens is not None:
            return self.val_tokens
        return max(1, round(rows * self.val_fraction))

    def build(self) -> ActivationFiles:
        return ActivationFiles(config=self)

    def export_metadata(self) -> dict:
        fields = {"model_name": self.model_name, "hook_name": self.hook_name}
        fields["hook_layer"] = self.hook_layer
        return {k: v for k, v in fields.items() if v is not None}


class RowBlocks(BatchStream):
    """Batches of rows [start, stop) of a table: contiguous blocks in a per-epoch seeded order
    (training), or consecutive rows in file order (validation, ``shuffle=False``)."""

    def __init__(
        self,
        table: RowTable,
        start: int,
        stop: int,
        batch_size: int,
        block_size: int,
        seed: int,
        shuffle: bool,
        **kw,
    ):
        super().__init__(batch_size, **kw)
        self.table, self.start, self.stop = table, start, stop
        self.seed, self.shuffle = seed, shuffle
        self.block_size = math.gcd(block_size, batch_size)  # blocks tile a batch exactly
        self.blocks_per_batch = batch_size // self.block_size
        self.n_blocks = (stop - start) // self.block_size
        self.global_batches = self.n_blocks // self.blocks_per_batch
        self.check_ranks(f"{table.path}: rows {start:,}..{stop:,}")

    def identity(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "batch_size": self.batch_size,
            "block_size": self.block_size,
            "rows": [self.start, self.stop],
            "files": self.table.fingerprint(),
        }

    def order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.n_blocks)
        return np.random.default_rng([self.seed, epoch]).permutation(self.n_blocks)

    def reader(self, epoch: int) -> Callable[[int], Tensor]:
        order = self.order(epoch)
        return lambda g: self.read_blocks(
            order[g * self.blocks_per_batch :][: self.blocks_per_batch]
        )

    def read_blocks(self, blocks: np.ndarray) -> Tensor:
        b = self.block_size
        out = torch.empty(len(blocks) * b, self.table.d_in, dtype=torch.float32)
        for i, block in enumerate(blocks):
            first = self.start + int(block) * b
            out[i * b : (i + 1) * b] = self.table.read(first, first + b)
        return out


class ActivationFiles(ActivationSource):
    """Activation files as a LightningDataModule: ``ActivationFiles("acts/", batch_size=4096)``
    (keyword arguments are ``FilesDataConfig``'s), then ``Trainer.fit(module, datamodule=...)``.
    Memory-mapped: nothing is read before ``setup`` and the first batches."""

    def __init__(self, path: str | None = None, *, config: FilesDataConfig | None = None, **kw):
        super().__init__()
        if config is None:
            if path is None:
                raise ValueError("ActivationFiles needs a path (a file or a folder of files).")
            config = FilesDataConfig(path=str(path), **kw)
        elif path is not None or kw:
            raise ValueError("Give ActivationFiles either config= or a path and keywords.")
        self.cfg = config
        self.table: RowTable | None = None

    def _open(self) -> RowTable:
        if self.table is None:
            self.table = RowTable(self.cfg.path, self.cfg.key)
        return self.table

    def setup(self, stage: str | None = None) -> None:
        self._open()

    @property
    def split(self) -> int:
        """The first validation row: rows before it train, rows from it validate."""
        table = self._open()
        return table.rows - self.cfg.validation_rows(table.rows)

    def sample_activations(self, n_tokens: int) -> Tensor:
        """The first ``n_tokens`` rows of epoch 0 (fewer if the training rows are fewer):
        blocks from across the files, the same on every rank."""
        stream = self._stream(0, self.split, self.cfg.batch_size, True, "none", world=(0, 1))
        n_blocks = min(stream.n_blocks, max(1, math.ceil(n_tokens / stream.block_size)))
        return stream.read_blocks(stream.order(0)[:n_blocks])[:n_tokens]

    def _stream(self, start, stop, batch_size, shuffle, track, world=None, block=None) -> RowBlocks:
        rank, size = world or self.rank_and_world()
        return RowBlocks(
            self._open(),
            start,
            stop,
            batch_size,
            block or self.cfg.block_size,
            self.cfg.seed,
            shuffle,
            rank=rank,
            world_size=size,
            prefetch=self.cfg.prefetch_batches,
            track=track,
        )

    def train_dataloader(self) -> RowBlocks:
        stream = self._stream(0, self.split, self.cfg.batch_size, True, self.train_track())
        return self.attach_train_stream(stream)

    def val_dataloader(self) -> RowBlocks:
        rows = self._open().rows - self.split
        _, world = self.rank_and_world()
        # Small held-out sets still give every rank a batch.
        batch = min(self.cfg.batch_size, max(1, rows // world))
        return self._stream(self.split, self._open().rows, batch, False, "none", block=batch)
