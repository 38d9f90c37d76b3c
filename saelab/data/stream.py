"""Numbered global batches, split across DDP ranks, with a position that survives a restart.

Every activation source numbers the batches of an epoch ``0 .. global_batches - 1``. Rank ``r``
of ``w`` ranks reads global batches ``start + r, start + r + w, ...``, so ranks never overlap
and together cover the epoch (fewer than ``w`` leftover batches are dropped so every rank takes
the same number of steps). When a source builds a batch of ``w*B`` rows as ``w`` consecutive
batches of ``B`` rows (both sources do when their block size divides ``B``), ``w`` ranks with
batch ``B`` read, step for step, exactly the rows one process with batch ``w*B`` reads: DDP
then averages the same gradient (docs/scaling.md).

The position (epoch, next global batch) is the same on every rank and stays meaningful if the
number of ranks changes; checkpoints store it so a resumed run neither repeats nor skips data.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

from torch import Tensor

_END = object()
TRACK_MODES = ("yield", "external", "none")


class BatchStream:
    """An iterable over float32 batches [batch_size, d_in]; each ``iter()`` is (the rest of) one
    epoch. Subclasses set ``global_batches`` and implement ``reader(epoch)`` and ``identity()``.

    ``track="yield"``: a batch counts as consumed when it is handed out (plain iteration).
    ``track="external"``: the owner calls ``mark_consumed()`` when a batch is really used (the
    DataModule does so from a Lightning hook: Lightning may fetch ahead of what it trains on).
    ``track="none"``: the position never moves; every ``iter()`` starts at the same place
    (validation: each run must see the same batches, even when cut short by limit_val_batches).
    """

    global_batches: int

    def __init__(
        self,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        prefetch: int = 2,
        track: str = "yield",
    ):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} is not in 0..{world_size - 1}")
        if track not in TRACK_MODES:
            raise ValueError(f"track={track!r}: use 'yield', 'external' or 'none'")
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.prefetch, self.track = prefetch, track
        self.epoch, self.offset = 0, 0

    # --- what a subclass provides ----------------------------------------------------------
    def reader(self, epoch: int) -> Callable[[int], Tensor]:
        """A function global batch number -> batch, for ``epoch``."""
        raise NotImplementedError

    def identity(self) -> dict[str, Any]:
        """What must not change between saving a position and restoring it (data and order)."""
        return {"batch_size": self.batch_size}

    def check_ranks(self, what: str) -> None:
        if self.global_batches < self.world_size:
            raise ValueError(
                f"{what}: fewer than one batch of {self.batch_size} per rank for {self.world_size} "
                "rank(s). Raise the token budget or lower data.batch_size"
            )

    # --- positions -------------------------------------------------------------------------
    def __len__(self) -> int:
        """Batches this rank gets in a full epoch."""
        return self.global_batches // self.world_size

    def global_indices(self, epoch: int, start: int) -> range:
        """The global batch numbers this rank reads in ``epoch`` from position ``start``."""
        usable = start + (self.global_batches - start) // self.world_size * self.world_size
        return range(start + self.rank, usable, self.world_size)

    def mark_consumed(self) -> None:
        self.offset += self.world_size
        if self.global_batches - self.offset < self.world_size:  # this epoch is used up
            self.epoch, self.offset = self.epoch + 1, 0

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "offset": self.offset, **self.identity()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in self.identity().items():
            if state.get(key) != value:
                raise ValueError(
                    f"cannot resume the data position: the checkpoint was saved with {key}="
                    f"{state.get(key)!r} but this run has {key}={value!r} (different data or "
                    "order); resume with the original data config or start a new run"
                )
        self.epoch, self.offset = int(state["epoch"]), int(state["offset"])

    # --- reading ---------------------------------------------------------------------------
    def _produce(self, epoch: int, start: int) -> Iterator[Tensor]:
        read = self.reader(epoch)
        for g in self.global_indices(epoch, start):
            yield read(g)

    def __iter__(self) -> Iterator[Tensor]:
        # An epoch starts where consumption stands, so a restored position resumes exactly and
        # calling iter() twice (Lightning does) does not skip anything.
        batches = self._produce(self.epoch, self.offset)
        if self.prefetch > 0:
            batches = prefetch(batches, self.prefetch)
        for batch in batches:
            if self.track == "yield":
                self.mark_consumed()
            yield batch


def prefetch(source: Iterator[Tensor], depth: int) -> Iterator[Tensor]:
    """Run ``source`` in a background thread, ``depth`` items ahead. Reading memory maps, numpy
    copies and torch kernels release the GIL, so this overlaps I/O with the training step."""
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
        except BaseException as e:
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
