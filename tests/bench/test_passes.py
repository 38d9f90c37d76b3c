"""bench/passes.py scores a run's exported SAE on its own validation rows exactly as the run's
validation did, and counts the passes the run made over its cache."""

from __future__ import annotations

import json

import pytest

from bench.passes import measure, parse_args
from tests.conftest import lm_run_overrides


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
