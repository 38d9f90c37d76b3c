"""bench/passes.py scores a run's exported SAE on its own validation rows exactly as the run's
validation did, counts the passes the run made over its cache, and finds rows of the training
split that the run never read."""

from __future__ import annotations

import json

import pytest
import torch

from bench.passes import measure, parse_args, unseen_rows
from saelab.data.cache_build import CacheBuilder, LMSource
from tests.conftest import lm_run_overrides
from tests.data.conftest import model_config


@pytest.mark.slow
def test_the_bench_scores_the_held_out_rows_as_the_run_did(llama_run, llama_dir):
    run, _ = llama_run
    overrides = lm_run_overrides(llama_dir, "resid", run.parent / "cache")
    result = measure(run, 4096, overrides)
    metrics = json.loads((run / "metrics.json").read_text())
    assert result["passes"] == pytest.approx(metrics["train_tokens"] / 4096)
    assert result["val_l0"] == pytest.approx(metrics["val/l0"], rel=1e-4)
    assert result["val_fvu"] == pytest.approx(metrics["val/fvu"], rel=1e-3)
    assert 0 < result["train_fvu"] < 1 and result["train_l0"] > 0


def test_overrides_may_follow_the_token_counts():
    args = parse_args(["--train-tokens", "1048576", "2097152", "layer=6", "sae.d_sae=4096"])
    assert args.train_tokens == [1_048_576, 2_097_152]
    assert args.overrides == ["layer=6", "sae.d_sae=4096"]
    args = parse_args(["site=mlp", "--train-tokens", "2097152", "--runs", "a", "seed=1"])
    assert (args.train_tokens, args.runs, args.overrides) == (
        [2_097_152],
        ["a"],
        ["site=mlp", "seed=1"],
    )


def _caches(root, sizes, shuffle_seed=0):
    """Caches of tiny-gemma-2 on its default corpus, 32-token contexts, 256-row shards."""
    source = LMSource(model=model_config(), device="cpu", lm_batch_size=4, progress=False)
    builder = CacheBuilder(source, root)
    return [
        builder.ensure(
            [source.spec("train", "resid", 2, n, shard_tokens=256, shuffle_seed=shuffle_seed)]
        )[0]
        for n in sizes
    ]


@pytest.fixture(scope="module")
def run_and_larger(tmp_path_factory):
    """A run's cache of 1,000 rows (shards of 256, 256, 256 and a partial 232) and a cache of
    2,000 rows of the same split."""
    return _caches(tmp_path_factory.mktemp("caches"), [1000, 2000])


def _as_set(x: torch.Tensor) -> set[tuple[float, ...]]:
    return {tuple(r) for r in x.tolist()}


def test_unseen_rows_are_the_larger_caches_rows_that_the_run_never_read(run_and_larger):
    # The run's partial last shard has a counterpart in the larger cache that holds other rows
    # too, so the unseen rows start at the larger cache's fifth shard.
    seen, larger = run_and_larger
    rows = unseen_rows(seen, larger, rows=512, blocks=8)
    assert rows.shape == (512, seen.d_in)
    unseen = _as_set(rows)
    # The run's rows are the larger cache's first four shards (its partial last shard among
    # them, shuffled otherwise), and the unseen rows come from the rest. Some activations recur
    # (the same token after <bos> in two contexts), so "from the rest" is checked on the rows
    # only the first four shards hold.
    first, rest = _as_set(larger.read(0, 1024)), _as_set(larger.read(1024, len(larger)))
    assert _as_set(seen.read(0, len(seen))) <= first
    assert unseen <= rest and not unseen & (first - rest)
    # The whole shards the two caches share are the same rows: the larger extends the run's.
    torch.testing.assert_close(seen.read(0, 768), larger.read(0, 768), rtol=0, atol=0)


def test_unseen_rows_refuses_another_cache_or_too_few_rows(run_and_larger, tmp_path):
    seen, larger = run_and_larger
    (other,) = _caches(tmp_path, [2000], shuffle_seed=1)
    with pytest.raises(SystemExit, match="does not start with the run's cache"):
        unseen_rows(seen, other, rows=512, blocks=8)
    with pytest.raises(SystemExit, match="976 past the run's 1,000"):
        unseen_rows(seen, larger, rows=4096, blocks=8)
