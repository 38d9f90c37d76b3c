"""The contract between activation sources and the SAE LightningModules.

A source's config dataclass has ``build()`` returning one of these. The LightningModule reads
``batch_size`` (tokens per step, for dead-latent windows) and calls ``sample_activations`` once on
fit start (normalisation scale, data-dependent init); batches are float32 ``[batch_size, d_in]``.

Training batches come from a ``BatchStream`` (``stream.py``): split across DDP ranks by global
batch number, with a position that this class saves in checkpoints (``state_dict``) and
restores, counting only the batches Lightning really trained on (``on_before_batch_transfer``
runs after Lightning's one-batch look-ahead), so a resumed run neither repeats nor skips data.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import lightning.pytorch as pl
from torch import Tensor

from saelab.data.stream import BatchStream


class ActivationSource(pl.LightningDataModule):
    """Base for every activation source; ``self.cfg`` has ``d_in`` and ``batch_size``."""

    _train_stream: BatchStream | None = None
    _resume: dict[str, Any] | None = None

    @property
    def d_in(self) -> int:
        return self.cfg.d_in

    @property
    def batch_size(self) -> int:
        return self.cfg.batch_size

    def sample_activations(self, n_tokens: int) -> Tensor:
        """The first ``n_tokens`` training activations, float32 [n, d_in], deterministic."""
        raise NotImplementedError

    def activation_chunks(self, n_tokens: int, chunk_tokens: int) -> Iterator[Tensor]:
        """The first ``n_tokens`` training activations in chunks of at most ``chunk_tokens``
        rows. A source that can read from an offset overrides this to keep memory bounded."""
        yield self.sample_activations(n_tokens)

    def mean_squared_norm(
        self, n_tokens: int, chunk_tokens: int = 65_536, cols: slice | None = None
    ) -> float:
        """E||x||^2 over the first ``n_tokens`` training activations (their columns ``cols``:
        a transcoder's input or target half), summed in float64 chunk by chunk (memoised: every
        SAE of a several-SAE run asks for the same number)."""
        memo = self.__dict__.setdefault("_mean_squared_norm", {})
        cols = cols or slice(None)
        key = (n_tokens, cols.start, cols.stop)
        if key not in memo:
            total, count = 0.0, 0
            for chunk in self.activation_chunks(n_tokens, chunk_tokens):
                total += float(chunk[:, cols].double().pow(2).sum())
                count += chunk.shape[0]
            memo[key] = total / max(count, 1)
        return memo[key]

    # --- ranks and the training position ---------------------------------------------------
    def rank_and_world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def train_track(self) -> str:
        # Attached to a Trainer, consumption is counted in on_before_batch_transfer.
        return "external" if self.trainer is not None else "yield"

    def attach_train_stream(self, stream: BatchStream) -> BatchStream:
        """Make ``stream`` the one whose position checkpoints save; apply a pending restore."""
        if self._resume is not None:
            stream.load_state_dict(self._resume)
            self._resume = None
        self._train_stream = stream
        return stream

    def on_before_batch_transfer(self, batch: Tensor, dataloader_idx: int) -> Tensor:
        trainer, stream = self.trainer, self._train_stream
        if (
            trainer is not None
            and trainer.training
            and stream is not None
            and stream.track == "external"
        ):
            stream.mark_consumed()
        return batch

    def state_dict(self) -> dict[str, Any]:
        if self._train_stream is not None:
            return self._train_stream.state_dict()
        return dict(self._resume) if self._resume is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        self._resume = dict(state_dict)
        if self._train_stream is not None:
            self._train_stream.load_state_dict(self._resume)
            self._resume = None
