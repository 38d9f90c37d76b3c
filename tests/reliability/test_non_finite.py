"""Non-finite training stops with a clear error and leaves nothing that looks like a result: a
huge learning rate (NaN weights, a NaN loss) ends the run naming the step, the culprit and the
fix, the last good checkpoint stays, nothing is exported, and train.py exits non-zero. JSON is
strict; bad run-level values fail before any work, naming the key."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch

from saelab.fileio import NON_FINITE_KEY, finite_or_null, write_json
from saelab.lit.checkpointing import AtomicCheckpointIO, find_checkpoint
from saelab.lit.guards import NonFiniteError
from saelab.runner import build, train
from tests.conftest import TINY_RUN, compose_config
from tests.scale.helpers import TINY, train_py


def _assert_nothing_exported(run) -> None:
    assert not (run / "sae").exists() and not (run / "metrics.json").exists()
    assert not (run / "eval.json").exists()


# A 20-step JumpReLU run is all threshold warm-up (docs/maths.md §8.3), whose per-batch
# thresholds stay finite however far the weights go: the learnt thresholds are what overflow.
NO_WARMUP = {"jumprelu": ["sae.threshold_warmup_fraction=0"], "gated": []}


@pytest.mark.parametrize("family", ["jumprelu", "gated"])
def test_a_huge_learning_rate_stops_before_saving_or_exporting_nan(tmp_path, family):
    lr = {"jumprelu": "1e8", "gated": "1e6"}[family]
    cfg = compose_config(
        [f"sae={family}", *TINY_RUN, "logger=none", f"sae.lr={lr}", "checkpoint_every_n_steps=1"]
        + NO_WARMUP[family],
        tmp_path,
    )
    with pytest.raises(NonFiniteError) as e:
        train(cfg)
    message = str(e.value)
    assert f"sae.lr={float(lr):g}" in message and "check the data" in message
    assert "The checkpoint due now was NOT written" in message
    _assert_nothing_exported(tmp_path)
    kept = find_checkpoint(tmp_path)  # the last good checkpoint, verified, all finite
    checkpoint = AtomicCheckpointIO().load_checkpoint(kept)
    step = checkpoint["global_step"]
    assert f"at step {step + 1} the weights went non-finite" in message
    assert f"The last good checkpoint is {kept} (step {step})" in message
    assert all(torch.isfinite(v).all() for v in checkpoint["state_dict"].values())


def test_a_nan_loss_is_named_with_its_terms_and_step(tmp_path):
    # No checkpoint before the end: the loss check (every step) is what catches it.
    cfg = compose_config(
        [
            *TINY_RUN,
            "logger=none",
            "sae.lr=1e8",
            "checkpoint_every_n_steps=1000",
            *NO_WARMUP["jumprelu"],
        ],
        tmp_path,
    )
    with pytest.raises(NonFiniteError, match=r"loss became non-finite at step \d+ \(.*train/loss"):
        train(cfg)
    assert find_checkpoint(tmp_path) is None
    _assert_nothing_exported(tmp_path)


@pytest.mark.slow
def test_train_py_exits_non_zero_on_nan_and_exports_nothing(tmp_path):
    overrides = [*TINY, "sae.lr=1e8", *NO_WARMUP["jumprelu"], f"hydra.run.dir={tmp_path}"]
    done = train_py(overrides, check=False)
    assert done.returncode != 0
    assert "NonFiniteError: Training stopped" in done.stderr
    _assert_nothing_exported(tmp_path)


# --- strict JSON ---------------------------------------------------------------------------
def test_json_refuses_nan_naming_the_key_and_writes_nothing(tmp_path):
    path = tmp_path / "metrics.json"
    with pytest.raises(ValueError, match=r"metrics\.json: val/fvu, deep\.x\.1 is not a finite"):
        write_json(path, {"val/fvu": math.nan, "deep": {"x": [1.0, math.inf]}, "ok": 1.0})
    assert not path.exists() and not list(tmp_path.iterdir())


def test_undefined_metrics_become_null_with_the_reason():
    out = finite_or_null({"a": 1.0, "b": math.nan, "c": "text"}, "zero denominator")
    assert out["a"] == 1.0 and out["b"] is None and out["c"] == "text"
    assert out[NON_FINITE_KEY] == {"b": "nan: zero denominator"}
    json.dumps(out, allow_nan=False)


# --- run-level values ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("override", "key", "schema"),
    [
        ("trainer.max_step=10", "max_step", "TrainerConfig"),
        ("eval_token=0", "eval_token", "RunConfig"),
    ],
)
def test_a_typo_in_a_root_or_trainer_key_fails_when_composed_naming_it(
    tmp_path, override, key, schema
):
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException) as error:
        compose_config([*TINY_RUN, override], tmp_path / "run")
    assert f"Key '{key}' not in '{schema}'" in str(error.value.__cause__)


def test_a_wrong_type_in_a_root_key_fails_when_composed(tmp_path):
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="seed=abc"):
        compose_config([*TINY_RUN, "seed=abc"], tmp_path / "run")


@pytest.mark.parametrize(
    "override",
    [
        "eval_tokens=-5",
        "trainer.max_steps=0",
        "trainer.max_steps=-1",
        "checkpoint_every_n_steps=0",
        "trainer.val_check_interval=0",
        "trainer.log_every_n_steps=-1",
        "trainer.gradient_clip_val=-1.0",
    ],
)
def test_bad_run_values_fail_before_any_work_naming_the_key(tmp_path, override):
    cfg = compose_config([*TINY_RUN, "logger=none", override], tmp_path / "run")
    with pytest.raises(ValueError, match="^" + re.escape(override)):
        build(cfg)
    with pytest.raises(ValueError):
        train(cfg)
    assert not (tmp_path / "run").exists()
