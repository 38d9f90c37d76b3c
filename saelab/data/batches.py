"""Batches from a cache: contiguous blocks, shuffled per epoch, split across DDP ranks.

The shards are already shuffled across contexts when written, so a batch is a few CONTIGUOUS
blocks of rows (one memory-mapped slice each: sequential I/O, no per-row gather or collate)
taken in an order that is reshuffled every epoch with a seed. A batch mixes ``batch_size /
block_size`` blocks from anywhere in the cache.

Global batch g of an epoch is blocks ``order[g*k : (g+1)*k]``; how ranks share the global
batches and how the position is saved is ``stream.py``'s job. Because consecutive global
batches are consecutive runs of ``order``, w ranks with batch B read exactly what one process
with batch w*B reads (same block size), which makes DDP match single-process training.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from saelab.data import shards
from saelab.data.cache import ActivationCache
from saelab.data.stream import BatchStream, prefetch

__all__ = ["ActivationLoader", "prefetch"]


class ActivationLoader(BatchStream):
    """An iterable over float32 batches [batch_size, d_in] of a cache; see ``BatchStream``."""

    def __init__(
        self,
        cache: ActivationCache,
        batch_size: int,
        block_size: int = 512,
        seed: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        prefetch: int = 2,
        pin_memory: bool = False,
        track: str = "yield",
    ):
        super().__init__(
            batch_size, rank=rank, world_size=world_size, prefetch=prefetch, track=track
        )
        self.cache, self.seed, self.shuffle, self.pin_memory = cache, seed, shuffle, pin_memory
        # Blocks must tile a batch exactly; gcd keeps any batch size valid.
        self.block_size = math.gcd(block_size, batch_size)
        self.blocks_per_batch = batch_size // self.block_size
        self.blocks = np.array(
            [
                (s, start)
                for s, rows in enumerate(cache.rows)
                for start in range(0, rows - self.block_size + 1, self.block_size)
            ],
            dtype=np.int64,
        ).reshape(-1, 2)
        self.global_batches = len(self.blocks) // self.blocks_per_batch
        self.check_ranks(f"the cache {cache.folder} holds {len(cache):,} tokens")

    def identity(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "batch_size": self.batch_size,
            "block_size": self.block_size,
            "cache_key": self.cache.key,
        }

    def order(self, epoch: int) -> np.ndarray:
        """Block indices of ``epoch`` in reading order (seeded: the same on every rank)."""
        if not self.shuffle:
            return np.arange(len(self.blocks))
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.blocks))

    def reader(self, epoch: int) -> Callable[[int], Tensor]:
        order = self.order(epoch)
        return lambda g: self.read_batch(order, g)

    def read_batch(self, epoch_order: np.ndarray, g: int) -> Tensor:
        out = torch.empty(self.batch_size, self.cache.d_in, dtype=torch.float32)
        if self.pin_memory:
            out = out.pin_memory()
        dst = out.numpy()
        b = self.block_size
        pieces = []
        for i, block in enumerate(
            epoch_order[g * self.blocks_per_batch : (g + 1) * self.blocks_per_batch]
        ):
            shard, start = (int(v) for v in self.blocks[block])
            shards.decode_into(
                dst[i * b : (i + 1) * b],
                self.cache.rows_of(shard, start, start + b),  # checksummed on first read
                self.cache.dtype,
            )
            pieces.append((shard, start, b))
        self.cache.check_finite(dst, pieces)  # a NaN batch names its shard, never trains
        return out
