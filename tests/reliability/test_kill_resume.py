"""kill -9 at several points of a training run, then the same command again (twice): the run
ends with bit-for-bit the weights and Adam moments of a run that was never interrupted, in the
dense regime and in the sparse one (few active latents: the CPU's sparse path).

(kill -9 during caching: tests/data/test_resume.py and test_cache_attacks.py; SIGTERM:
tests/scale/test_resume.py.)
"""

from __future__ import annotations

import json

import pytest

from saelab.sae.sparse import SPARSE_MAX_DENSITY
from tests.scale.helpers import (
    assert_same,
    kill_when,
    rerun_here,
    saved_step,
    start_train_py,
    train_here,
)

from .conftest import DENSE, EVERY, SPARSE, STEPS, final_state


def _killed_twice_then_finished(run, args) -> list[int]:
    """Kill right after the first checkpoint, rerun, kill again two checkpoints later, rerun
    to the end (in this process: the kills are the attack); returns the steps the reruns
    resumed from."""
    kill_when(start_train_py(args), lambda: saved_step(run) >= EVERY)
    first = saved_step(run)
    kill_when(start_train_py(args), lambda: saved_step(run) >= first + 2 * EVERY)
    second = saved_step(run)
    assert "resuming from" in rerun_here(args, run)
    return [first, second]


@pytest.mark.slow
def test_kill_9_twice_in_the_dense_regime_ends_bit_for_bit_as_uninterrupted(
    tmp_path, dense_reference
):
    run = tmp_path / "run"
    steps = _killed_twice_then_finished(run, [*DENSE, f"hydra.run.dir={run}"])
    assert 0 < steps[0] < steps[1] < STEPS
    assert_same(final_state(run), dense_reference)


@pytest.mark.slow
def test_kill_9_twice_in_the_sparse_regime_ends_bit_for_bit_as_uninterrupted(tmp_path):
    reference = tmp_path / "reference"
    train_here(SPARSE, reference)
    metrics = json.loads((reference / "metrics.json").read_text())
    d_sae = 16 * 32
    assert metrics["val/l0"] / d_sae < SPARSE_MAX_DENSITY, "the run must be in the sparse regime"
    run = tmp_path / "run"
    steps = _killed_twice_then_finished(run, [*SPARSE, f"hydra.run.dir={run}"])
    assert 0 < steps[0] < steps[1] < STEPS
    assert_same(final_state(run), final_state(reference))
