"""LM activations as SAE training data: the ``data=activations`` config and its DataModule.

The first run builds (or finishes) a cache per split (``cache_build.py``): the train split of
the corpus for training, its own, smaller validation split for validation. Every later run
with the same key just memory-maps it. Batches are contiguous blocks of the pre-shuffled
shards (``batches.py``), never per-row gathers, never the whole cache in RAM.

Resuming and DDP: ``ActivationSource`` (``base.py``) saves the loader's position in
checkpoints and splits batches across ranks (``stream.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from saelab.data.base import ActivationSource
from saelab.data.batches import ActivationLoader
from saelab.data.cache import VERIFY_MODES, ActivationCache, CacheSpec, cache_root
from saelab.data.cache_build import CacheBuilder, LMSource
from saelab.data.lm_data import LMDataConfig, check_validation_size
from saelab.data.shards import check_dtype
from saelab.lm.corpus import check_split


@dataclass
class ActivationsDataConfig(LMDataConfig):
    """``data=activations``: the fields of every LM source (``lm_data.py``) and the cache's."""

    dtype: str = "float32"
    """Storage dtype of the cache: float32, bfloat16 or float16 (batches are always float32)."""
    train_tokens: int = 524_288
    shard_tokens: int = 131_072
    """Rows per shard file = the shuffle buffer (rows are shuffled across ~this/context contexts)."""
    block_size: int = 512
    """Rows per contiguous read; a batch is batch_size/block_size blocks from anywhere."""
    cache_dir: str | None = None
    """Cache root; None = $SAELAB_CACHE_DIR or ~/.cache/saelab/activations."""
    verify_checksums: str = "first"
    """first (full check once per cache), always, or never (sizes are always checked)."""
    shuffle_seed: int = 0
    """Shuffle inside shards when the cache is built (part of the cache key). ``seed`` orders
    the blocks per epoch (not part of the key)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_dtype(self.dtype)
        if self.train_tokens < self.batch_size:
            raise ValueError(
                f"data.train_tokens={self.train_tokens} is invalid: it must be >= "
                f"data.batch_size={self.batch_size} (one full batch)."
            )
        if self.verify_checksums not in VERIFY_MODES:
            raise ValueError(
                f"data.verify_checksums={self.verify_checksums!r} is invalid: use one of "
                f"{', '.join(VERIFY_MODES)}."
            )

    def positive_keys(self) -> list[str]:
        return [*super().positive_keys(), "train_tokens", "shard_tokens", "block_size"]

    def build(self) -> ActivationDataModule:
        return ActivationDataModule(self)


class ActivationDataModule(ActivationSource):
    """Cheap to construct: nothing is hashed, loaded or built before ``prepare_data``/``setup``
    (or the first ``sample_activations``)."""

    def __init__(self, cfg: ActivationsDataConfig):
        super().__init__()
        self.cfg = cfg
        self.train_cache: ActivationCache | None = None
        self.val_cache: ActivationCache | None = None

    def specs(self, source: LMSource) -> tuple[CacheSpec, CacheSpec]:
        c = self.cfg
        common = {
            "site": c.site,
            "layer": c.layer,
            "dtype": c.dtype,
            "context_length": c.context_length,
            "shard_tokens": c.shard_tokens,
            "shuffle_seed": c.shuffle_seed,
        }
        return (
            source.spec("train", n_tokens=c.train_tokens, **common),
            source.spec("validation", n_tokens=c.val_tokens, **common),
        )

    # --- Lightning data hooks -------------------------------------------------------------
    def prepare_data(self) -> None:
        self._open()

    def setup(self, stage: str | None = None) -> None:
        self._open()

    def _open(self) -> None:
        """Build the missing caches (under a lock: concurrent runs wait and reuse), then open."""
        if self.train_cache is not None:
            return
        c = self.cfg
        source = LMSource(
            model=c.model,
            corpus=c.corpus,
            device=c.device,
            lm_batch_size=c.lm_batch_size,
            progress=c.progress,
        )
        builder = CacheBuilder(source, cache_root(c.cache_dir), c.verify_checksums)
        train_spec, val_spec = self.specs(source)
        # The small validation cache first: an empty or too-short split fails in seconds,
        # not after the long pass over the train split.
        check_split(c.corpus, "validation")
        (self.val_cache,) = builder.ensure([val_spec], expected_d_in=c.d_in)
        check_validation_size(len(self.val_cache), c.batch_size, c.corpus)
        (self.train_cache,) = builder.ensure([train_spec], expected_d_in=c.d_in)
        for cache in (self.train_cache, self.val_cache):
            if cache.d_in != c.d_in:
                raise ValueError(
                    f"data.d_in={c.d_in} but the cache {cache.folder} holds "
                    f"{cache.d_in}-wide activations; fix site.d_in / model.d_model"
                )

    def sample_activations(self, n_tokens: int) -> Tensor:
        """The first ``n_tokens`` training tokens (in the cache's stored, shuffled order)."""
        self._open()
        return self.train_cache.read(0, n_tokens)

    def activation_chunks(self, n_tokens: int, chunk_tokens: int):
        self._open()
        stop = min(n_tokens, len(self.train_cache))
        for start in range(0, stop, chunk_tokens):
            yield self.train_cache.read(start, min(stop, start + chunk_tokens))

    def _loader(self, cache: ActivationCache, shuffle: bool, track: str) -> ActivationLoader:
        rank, world = self.rank_and_world()
        return ActivationLoader(
            cache,
            self.cfg.batch_size,
            self.cfg.block_size,
            seed=self.cfg.seed,
            shuffle=shuffle,
            rank=rank,
            world_size=world,
            prefetch=self.cfg.prefetch_batches,
            pin_memory=torch.cuda.is_available(),
            track=track,
        )

    def train_dataloader(self) -> ActivationLoader:
        self._open()
        return self.attach_train_stream(self._loader(self.train_cache, True, self.train_track()))

    def val_dataloader(self) -> ActivationLoader:
        self._open()
        return self._loader(self.val_cache, False, "none")
