"""Fixtures for the activation pipeline: a small text corpus and caches written by hand (row i holds the value i) for loader tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from saelab.data import shards
from saelab.data.cache import MANIFEST, ActivationCache
from saelab.fileio import write_json
from saelab.lm import corpus
from saelab.lm.config import ModelConfig

TINY = "tiny-gemma-2"


@pytest.fixture(autouse=True)
def _no_home_cache(monkeypatch, tmp_path):
    # Never touch ~/.cache in tests: anything not given an explicit root lands in tmp_path.
    monkeypatch.setenv("SAELAB_CACHE_DIR", str(tmp_path / "env-cache"))


@pytest.fixture(scope="session")
def text_corpus(tmp_path_factory) -> corpus.CorpusConfig:
    """Six short documents, all in the train split, with a ragged last context."""
    folder = tmp_path_factory.mktemp("corpus")
    sources = sorted(p for _, p in corpus.stdlib_files() if p.stat().st_size > 4000)[:6]
    for i, path in enumerate(sources):
        (folder / f"doc{i}.txt").write_text(
            path.read_text(encoding="utf-8", errors="replace")[: 1500 + 97 * i]
        )
    cfg = corpus.CorpusConfig(source=str(folder), val_fraction=0.001)
    assert len(list(corpus.iter_documents(cfg, "train"))) == 6
    return cfg


def model_config(name: str = TINY, **kw) -> ModelConfig:
    base = dict(name_or_path=str(name), context_length=32)
    return ModelConfig(**{**base, **kw})


def write_cache(
    folder: Path, shard_rows: list[int], d_in: int = 4, dtype: str = "float32"
) -> ActivationCache:
    """A cache whose global row i is filled with the value i (so a batch names its rows)."""
    folder.mkdir(parents=True)
    entries, start = [], 0
    for index, rows in enumerate(shard_rows):
        x = torch.arange(start, start + rows, dtype=torch.float32)[:, None].expand(rows, d_in)
        entries.append(
            shards.write_array(folder / f"shard_{index:05d}.npy", shards.encode(x, dtype))
        )
        start += rows
    spec = {"dtype": dtype}
    write_json(
        folder / MANIFEST,
        {
            "key": f"hand-{start}-{dtype}",
            "spec": spec,
            "d_in": d_in,
            "shards": entries,
            "mean_squared_norm": 0.0,
        },
    )
    return ActivationCache(folder)


def row_ids(batch: torch.Tensor) -> np.ndarray:
    return batch[:, 0].numpy().astype(np.int64)
