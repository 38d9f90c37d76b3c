"""Batches from a cache: contiguous blocks, shuffled per epoch, split across DDP ranks.

The shards are already shuffled across contexts when written, so a batch is a few CONTIGUOUS
blocks of rows (one memory-mapped slice each: sequential I/O, no per-row gather or collate)
taken in an order that is reshuffled every epoch with a seed. A batch mixes ``batch_size /
block_size`` blocks from anywhere in the cache.

Positions are GLOBAL batch numbers within an epoch: global batch g is blocks
``order[g*k : (g+1)*k]``; rank r of w ranks takes g = start + r, start + r + w, ... so ranks
never overlap and together cover every full batch. The position (epoch, next global batch)
is the same on every rank, and still means the same thing if the number of ranks changes.
"""

from __future__ import annotations

import math
import queue
import threading
from typing import Any, Iterator

import numpy as np
import torch
from torch import Tensor

from saelab.data import shards
from saelab.data.cache import ActivationCache

_END = object()


class ActivationLoader:
    """An iterable over float32 batches [batch_size, d_in]; each ``iter()`` is one epoch.

    ``track="yield"``: a batch counts as consumed when it is handed out (plain iteration).
    ``track="external"``: the owner calls ``mark_consumed()`` when a batch is really used (the
    DataModule does so from a Lightning hook: Lightning may fetch ahead of what it trains on).
    ``track="none"``: the position never moves; every ``iter()`` starts at the same place
    (validation: each run must see the same batches, even when cut short by limit_val_batches).
    """

    def __init__(self, cache: ActivationCache, batch_size: int, block_size: int = 512,
                 seed: int = 0, shuffle: bool = True, rank: int = 0, world_size: int = 1,
                 prefetch: int = 2, pin_memory: bool = False, track: str = "yield"):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} is not in 0..{world_size - 1}")
        self.cache, self.batch_size, self.seed, self.shuffle = cache, batch_size, seed, shuffle
        self.rank, self.world_size, self.prefetch, self.pin_memory = rank, world_size, prefetch, pin_memory
        if track not in ("yield", "external", "none"):
            raise ValueError(f"track={track!r}: use 'yield', 'external' or 'none'")
        self.track = track
        # Blocks must tile a batch exactly; gcd keeps any batch size valid.
        self.block_size = math.gcd(block_size, batch_size)
        self.blocks_per_batch = batch_size // self.block_size
        self.blocks = np.array([(s, start) for s, rows in enumerate(cache.rows)
                                for start in range(0, rows - self.block_size + 1, self.block_size)],
                               dtype=np.int64).reshape(-1, 2)
        self.global_batches = len(self.blocks) // self.blocks_per_batch
        if self.global_batches < world_size:
            raise ValueError(
                f"the cache {cache.folder} holds {len(cache):,} tokens: fewer than one batch of "
                f"{batch_size} per rank for {world_size} rank(s). Raise the token budget or lower "
                "data.batch_size"
            )
        self.epoch, self.offset = 0, 0

    # --- positions -------------------------------------------------------------------------
    def __len__(self) -> int:
        """Batches this rank gets in a full epoch."""
        return self.global_batches // self.world_size

    def order(self, epoch: int) -> np.ndarray:
        """Block indices of ``epoch`` in reading order (seeded: the same on every rank)."""
        if not self.shuffle:
            return np.arange(len(self.blocks))
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.blocks))

    def global_indices(self, epoch: int, start: int) -> range:
        """The global batch numbers this rank reads in ``epoch`` from position ``start``."""
        usable = start + (self.global_batches - start) // self.world_size * self.world_size
        return range(start + self.rank, usable, self.world_size)

    def mark_consumed(self) -> None:
        self.offset += self.world_size
        if self.global_batches - self.offset < self.world_size:  # this epoch is used up
            self.epoch, self.offset = self.epoch + 1, 0

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "offset": self.offset, "seed": self.seed,
                "batch_size": self.batch_size, "block_size": self.block_size, "cache_key": self.cache.key}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        current = self.state_dict()
        for key in ("cache_key", "batch_size", "block_size", "seed"):
            if state.get(key) != current[key]:
                raise ValueError(
                    f"cannot resume the data position: the checkpoint was saved with {key}="
                    f"{state.get(key)!r} but this run has {key}={current[key]!r} (different data or "
                    "order); resume with the original data config or start a new run"
                )
        self.epoch, self.offset = int(state["epoch"]), int(state["offset"])

    # --- reading ---------------------------------------------------------------------------
    def read_batch(self, epoch_order: np.ndarray, g: int) -> Tensor:
        out = torch.empty(self.batch_size, self.cache.d_in, dtype=torch.float32)
        if self.pin_memory:
            out = out.pin_memory()
        dst = out.numpy()
        b = self.block_size
        for i, block in enumerate(epoch_order[g * self.blocks_per_batch: (g + 1) * self.blocks_per_batch]):
            shard, start = self.blocks[block]
            shards.decode_into(dst[i * b: (i + 1) * b], self.cache.shard(int(shard))[start: start + b],
                               self.cache.dtype)
        return out

    def _produce(self, epoch: int, start: int) -> Iterator[Tensor]:
        order = self.order(epoch)
        for g in self.global_indices(epoch, start):
            yield self.read_batch(order, g)

    def __iter__(self) -> Iterator[Tensor]:
        # An epoch starts where consumption stands, so a restored position resumes exactly and
        # calling iter() twice (Lightning does) does not skip anything.
        epoch, start = self.epoch, self.offset
        batches = self._produce(epoch, start)
        if self.prefetch > 0:
            batches = prefetch(batches, self.prefetch)
        for batch in batches:
            if self.track == "yield":
                self.mark_consumed()
            yield batch


def prefetch(source: Iterator[Tensor], depth: int) -> Iterator[Tensor]:
    """Run ``source`` in a background thread, ``depth`` items ahead. Reading memory maps and
    numpy copies release the GIL, so this overlaps I/O with the training step."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in source:
                if not put(item):
                    return
            put(_END)
        except BaseException as e:  # noqa: BLE001 - re-raised in the consumer
            put(e)

    thread = threading.Thread(target=work, name="saelab-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:  # consumer stopped (end, error or abandoned generator): stop the thread
        stop.set()
        thread.join(timeout=5)
