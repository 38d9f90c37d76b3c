"""bench/passes.py scores a run's exported SAE on its own validation rows exactly as the run's
validation did, and counts the passes the run made over its cache."""

from __future__ import annotations

import json

import pytest

from bench.passes import measure
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
