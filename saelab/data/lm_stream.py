"""``data=stream``: the LM runs alongside training and its activations are never written to disk.

For budgets a disk cache cannot hold (4B tokens of a 3,584-wide residual stream is ~29 TB in
bf16). Each rank reads the corpus's row stream (``saelab/lm/rows.py``: forwards stopped at the
deepest hooked layer, BOS/EOS/pad dropped, exactly the rows the cache would hold) and mixes it
in a shuffle buffer of ``buffer_tokens`` rows, the way the cache shuffles within a shard:

    window j = rows [j W, (j+1) W) of this rank's row stream, permuted with a seed of
               (data.seed, corpus pass, rank, j), emitted as W / batch_size batches

While window j is emitted, the next one is filled a slice per batch, in a background thread
(``BatchStream``'s prefetch): the LM's forwards overlap the SAE's steps. When the corpus runs
out the last, partial window is emitted (whole batches) and the next pass over the corpus
starts with new permutations, so the stream never ends; ``trainer.max_steps`` ends the run.

Exact resume: everything is a function of the position (this rank's batch count), which the
checkpoint holds (``ActivationSource.state_dict``). A resumed run counts its way to the window
from the token ids alone (tokenizing, no LM work), recomputes that one window, and continues
with the same batches, bit for bit on the same machine.

DDP: LM batch k of the corpus goes to rank k % world_size, so ranks read disjoint text, and
every rank's stream is unbounded, so they always take the same number of steps.

Validation: the first ``val_tokens`` rows of the corpus's validation split, computed once per
process and kept in memory. Normalisation: the scale is estimated on the first shuffle window
(at most ``buffer_tokens`` rows of the train split, the rows a one-process stream starts with),
and a one-process stream then trains on those rows instead of running the LM over them again.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from saelab.data.base import ActivationSource
from saelab.data.lm_data import LMDataConfig, check_validation_size
from saelab.data.stream import BatchStream
from saelab.lm import corpus as corpus_lib
from saelab.lm.load import lm_device, load_lm
from saelab.lm.rows import RowBatch, iter_rows
from saelab.lm.sites import SitePoint, check_points, site_width

UNBOUNDED = 2**62  # global batches of the stream's one epoch: it never runs out


@dataclass
class StreamDataConfig(LMDataConfig):
    """``data=stream``: the fields of every LM source (``lm_data.py``) and the buffer's size."""

    buffer_tokens: int = 65_536
    """Rows in the shuffle buffer (a multiple of batch_size): each batch mixes rows of
    ~buffer_tokens / context_length contexts. Two buffers live at once (one emitted, one
    filling): 2 x buffer_tokens x d_in x 4 bytes on the LM's device."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.buffer_tokens < self.batch_size or self.buffer_tokens % self.batch_size:
            raise ValueError(
                f"data.buffer_tokens={self.buffer_tokens} is invalid: it must be a multiple of "
                f"data.batch_size={self.batch_size} (the buffer is emitted as whole batches)."
            )

    def positive_keys(self) -> list[str]:
        return [*super().positive_keys(), "buffer_tokens"]

    def build(self) -> StreamDataModule:
        return StreamDataModule(self)


class StreamClosed(RuntimeError):
    """Raised in a filler thread that asks for a forward after the stream was closed."""


class _ForwardGuard:
    """The lock around each forward (site hooks belong to the model, so two threads must not
    run it at once), refusing new forwards once the stream is closed."""

    def __init__(self, lm: StreamLM):
        self.lm = lm

    def __enter__(self) -> None:
        self.lm.lock.acquire()
        if self.lm.closed:
            self.lm.lock.release()
            raise StreamClosed("the activation stream was closed")

    def __exit__(self, *exc) -> None:
        self.lm.lock.release()


class StreamLM:
    """The model and tokenizer, with the lock that serialises their forwards (the stream's
    filler thread and the main thread share them)."""

    def __init__(self, cfg: StreamDataConfig, device: torch.device):
        self.cfg, self.lock, self.closed = cfg, threading.Lock(), False
        self.model, self.tokenizer = load_lm(cfg.model, device)
        self.device = next(self.model.parameters()).device
        self.point = SitePoint(cfg.site, cfg.layer)
        check_points(self.model, [self.point])
        width = site_width(self.model, cfg.site)
        if width != cfg.d_in:
            raise ValueError(
                f"data.d_in={cfg.d_in} but the {cfg.site} site of {cfg.model.name_or_path} is "
                f"{width} wide: drop the data.d_in override (it is read from the model's config)"
            )

    def rows(
        self,
        split: str,
        start_row: int = 0,
        stop_row: int | None = None,
        take: Callable[[int], bool] | None = None,
    ) -> Iterator[RowBatch]:
        c = self.cfg
        return iter_rows(
            self.model,
            self.tokenizer,
            corpus_lib.iter_documents(c.corpus, split),
            [self.point],
            context_length=c.contexts,
            lm_batch_size=c.lm_batch_size,
            prepend_bos=c.model.prepend_bos,
            start_row=start_row,
            stop_row=stop_row,
            take=take,
            lock=_ForwardGuard(self),
        )

    def close(self) -> None:
        """No forward starts after this returns, and none is running: a filler thread still
        alive then stops at its next forward. (A thread inside a forward when the interpreter
        exits aborts the process.)"""
        self.closed = True
        with self.lock:
            pass

    def first_rows(self, split: str, n: int, desc: str) -> Tensor:
        """Rows [0, n) of ``split`` (every LM batch), float32 on the CPU."""
        out = torch.empty(n, self.cfg.d_in, dtype=torch.float32)
        fill = 0
        with tqdm(total=n, desc=desc, unit="tok", disable=not self.cfg.progress) as bar:
            for batch in self.rows(split, stop_row=n):
                acts = self.checked(batch, split)
                out[fill : fill + len(acts)] = acts.float().cpu()
                fill += len(acts)
                bar.update(len(acts))
        return out[:fill]

    def checked(self, batch: RowBatch, split: str) -> Tensor:
        acts = batch.acts[self.point]
        if not torch.isfinite(acts).all():
            c = self.cfg
            raise FloatingPointError(
                f"non-finite activation values (NaN/inf) at site {c.site}, layer {c.layer}, in LM "
                f"batch {batch.index} of the {split} split of {c.model.name_or_path} "
                f"(model.dtype={c.model.dtype}). The forward overflowed or the weights are "
                "broken: try model.dtype=float32, check the checkpoint."
            )
        return acts


class _Filler:
    """Copies one pass's row stream into buffers, row ``start`` onwards, carrying the rows of
    an LM batch that straddles two windows."""

    def __init__(
        self, rows: Iterator[RowBatch], start: int, lm: StreamLM, prefix: Tensor | None = None
    ):
        """``prefix``: rows [0, P) of the pass, already computed; rows ``start`` to P come from
        it (``rows`` must then begin at row P)."""
        self.rows, self.next_row, self.lm = rows, start, lm
        self.carry: Tensor | None = None
        if prefix is not None and start < len(prefix):
            self.carry = prefix[start:].to(lm.device)  # next_row reaches P as it is taken
        self.ended = False
        self.rows_seen = 0  # rows of the pass counted so far (LM run or not)

    def fill(self, buffer: Tensor, fill: int, target: int) -> int:
        """Fill ``buffer`` up to ``target`` rows (fewer if the pass ends); the new fill."""
        while fill < target:
            if self.carry is None or not len(self.carry):
                batch = next(self.rows, None)
                if batch is None:
                    self.ended = True
                    return fill
                self.rows_seen = batch.row0 + batch.n
                if batch.acts is None:
                    continue
                acts = self.lm.checked(batch, "train")
                self.carry = acts[max(0, self.next_row - batch.row0) :]
            take = min(target - fill, len(self.carry))
            buffer[fill : fill + take] = self.carry[:take]
            self.carry, fill = self.carry[take:], fill + take
            self.next_row += take
        return fill


class LMActivationStream(BatchStream):
    """One rank's unbounded stream of shuffled training batches; see the module docstring."""

    def __init__(
        self,
        lm: StreamLM,
        cfg: StreamDataConfig,
        rank=0,
        world_size=1,
        track="yield",
        prefix: Tensor | None = None,
    ):
        """``prefix``: the first rows of the train split, already computed (the normalisation's
        sample): a one-process stream trains on them instead of running the LM again."""
        super().__init__(
            cfg.batch_size,
            rank=rank,
            world_size=world_size,
            prefetch=cfg.prefetch_batches,
            track=track,
        )
        self.lm, self.cfg = lm, cfg
        # Rank r of several reads LM batches r, r + world, ...: not the prefix's rows.
        self.prefix = prefix if world_size == 1 else None
        self.window = cfg.buffer_tokens
        self.per_window = cfg.buffer_tokens // cfg.batch_size
        self.global_batches = UNBOUNDED

    def identity(self) -> dict[str, Any]:
        # What decides which rows a rank reads, and in which order.
        c = self.cfg
        return {
            "batch_size": c.batch_size,
            "buffer_tokens": c.buffer_tokens,
            "seed": c.seed,
            "world_size": self.world_size,
            "lm_batch_size": c.lm_batch_size,
        }

    def _take(self, index: int) -> bool:
        return index % self.world_size == self.rank

    def _produce(self, epoch: int, start: int) -> Iterator[Tensor]:
        # ``start`` counts global batches; this rank has consumed start // world_size of them.
        yield from self.batches(start // self.world_size)

    def permutation(self, pass_: int, window: int, rows: int) -> Tensor:
        rng = np.random.default_rng([self.cfg.seed, pass_, self.rank, window])
        return torch.from_numpy(rng.permutation(rows)).to(self.lm.device)

    def batches(self, skip: int) -> Iterator[Tensor]:
        """This rank's batches, after the first ``skip`` of them."""
        W, B, d = self.window, self.batch_size, self.cfg.d_in
        device = self.lm.device
        current = torch.empty(W, d, dtype=torch.float32, device=device)
        upcoming = torch.empty(W, d, dtype=torch.float32, device=device)
        pass_ = 0
        while True:
            window, first = divmod(skip, self.per_window)
            prefix = self.prefix if pass_ == 0 else None
            start = max(window * W, 0 if prefix is None else len(prefix))
            rows = self.lm.rows("train", start_row=start, take=self._take)
            filler = _Filler(rows, window * W, self.lm, prefix)
            self.prefix = None  # the filler holds what it still needs
            with tqdm(
                total=W,
                desc=f"streaming {self.cfg.site}@{self.cfg.layer}: filling the shuffle buffer",
                unit="tok",
                disable=not self.cfg.progress or self.rank != 0,
                leave=False,
            ) as bar:
                fill = 0
                while fill < W and not filler.ended:
                    new = filler.fill(current, fill, min(W, fill + B))
                    bar.update(new - fill)
                    fill = new
            if fill // B <= first:  # this pass ends before the position: skip it whole
                total = filler.rows_seen  # the pass has ended: a partial window holds < W
                if total < B:
                    raise ValueError(
                        f"rank {self.rank} of {self.world_size} gets {total} rows from the train "
                        f"split of corpus.source={self.cfg.corpus.source!r}, less than one batch "
                        f"(data.batch_size={B}): use more text or fewer ranks"
                    )
                per_pass = total // W * self.per_window + total % W // B
                skip -= per_pass
                pass_ += 1
                continue
            # Emit from ``first`` on, filling the next window a slice per batch.
            while True:
                count = fill // B
                order = self.permutation(pass_, window, fill)
                up_fill = 0
                share = math.ceil(W / max(1, count - first))
                for i in range(first, count):
                    yield current[order[i * B : (i + 1) * B]]
                    if not filler.ended:
                        up_fill = filler.fill(upcoming, up_fill, min(W, up_fill + share))
                while up_fill < W and not filler.ended:
                    up_fill = filler.fill(upcoming, up_fill, W)
                if up_fill < B:  # the pass is over: the next one starts from its beginning
                    break
                current, upcoming = upcoming, current
                fill, window, first = up_fill, window + 1, 0
            skip, pass_ = 0, pass_ + 1


class _Rows(BatchStream):
    """Fixed rows in memory as consecutive batches (validation)."""

    def __init__(self, rows: Tensor, batch_size: int, rank=0, world_size=1):
        super().__init__(batch_size, rank=rank, world_size=world_size, prefetch=0, track="none")
        self.rows = rows
        self.global_batches = len(rows) // batch_size
        self.check_ranks(f"the validation rows ({len(rows):,} tokens)")

    def reader(self, epoch: int) -> Callable[[int], Tensor]:
        B = self.batch_size
        return lambda g: self.rows[g * B : (g + 1) * B]


class StreamDataModule(ActivationSource):
    """Cheap to construct: the LM is loaded on first use (``setup`` or ``sample_activations``)."""

    def __init__(self, cfg: StreamDataConfig, lm: StreamLM | None = None):
        """``lm``: an already loaded ``StreamLM`` of ``cfg`` (else loaded on first use)."""
        super().__init__()
        self.cfg = cfg
        self._lm = lm
        self._val_rows: Tensor | None = None
        self._first_rows: Tensor | None = None

    def lm(self) -> StreamLM:
        if self._lm is None:
            corpus_lib.check_split(self.cfg.corpus, "validation")
            self._lm = StreamLM(self.cfg, lm_device(self.cfg.device, self.trainer))
        return self._lm

    def setup(self, stage: str | None = None) -> None:
        self.val_rows()  # fails in seconds on a split too small, and before any training

    def teardown(self, stage: str | None = None) -> None:
        if stage == "fit" and self._lm is not None:
            # Stop the filler thread's forwards, then free the LM: the end-of-run evaluation
            # loads its own copy.
            self._lm.close()
            self._lm.model = self._lm.tokenizer = None
            self._lm, self._train_stream = None, None
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    def val_rows(self) -> Tensor:
        if self._val_rows is None:
            c = self.cfg
            rows = self.lm().first_rows(
                "validation", c.val_tokens, f"streaming {c.site}@{c.layer} (validation)"
            )
            check_validation_size(len(rows), c.batch_size, c.corpus)
            self._val_rows = rows
        return self._val_rows

    def sample_activations(self, n_tokens: int) -> Tensor:
        """The first ``n_tokens`` rows of the train split (those a one-process stream starts
        with), float32 on the CPU. Kept: the training stream starts with them rather than
        running the LM over them again, and a smaller request is a slice."""
        if self._first_rows is None or len(self._first_rows) < n_tokens:
            c = self.cfg
            desc = f"streaming {c.site}@{c.layer} (scale)"
            self._first_rows = self.lm().first_rows("train", n_tokens, desc)
        return self._first_rows[:n_tokens]

    def activation_chunks(self, n_tokens: int, chunk_tokens: int) -> Iterator[Tensor]:
        """The normalisation's sample: at most the first shuffle window (``buffer_tokens``),
        the rows a run fills before its first step anyway and then trains on; a larger
        ``sae.normalization_tokens`` would make every run, however short, run the LM over them
        first (docs/streaming.md)."""
        yield self.sample_activations(min(n_tokens, self.cfg.buffer_tokens))

    def train_dataloader(self) -> LMActivationStream:
        rank, world = self.rank_and_world()
        stream = LMActivationStream(
            self.lm(), self.cfg, rank, world, self.train_track(), prefix=self._first_rows
        )
        self._first_rows = None  # the stream holds them now (until it passes them)
        return self.attach_train_stream(stream)

    def val_dataloader(self) -> _Rows:
        rank, world = self.rank_and_world()
        return _Rows(self.val_rows(), self.cfg.batch_size, rank, world)
