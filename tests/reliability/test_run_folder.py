"""A run folder holding a finished run is never overwritten silently: without a checkpoint to
continue from, training into it is refused (naming the folder and overwrite=true); the same
finished run again is a no-op; overwrite=true starts over. Resuming and extending are as before
(tests/scale/test_resume.py)."""

from __future__ import annotations

import json
import shutil

import pytest

from saelab.lit.checkpointing import checkpoint_step, find_checkpoint
from saelab.runner import train
from tests.conftest import TINY_RUN, compose_config

RUN = [*TINY_RUN, "logger=none", "trainer.max_steps=4", "eval_tokens=0"]


def _snapshot(run) -> dict[str, bytes]:
    return {
        str(p.relative_to(run)): p.read_bytes()
        for p in sorted(run.rglob("*"))
        if p.is_file() and "checkpoints" not in p.parts
    }


def test_a_finished_run_without_a_checkpoint_is_not_overwritten(tmp_path):
    train(compose_config(RUN, tmp_path))
    shutil.rmtree(tmp_path / "checkpoints")  # e.g. deleted to save space, or copied without
    before = _snapshot(tmp_path)
    with pytest.raises(FileExistsError) as e:
        train(compose_config([*RUN, "seed=1"], tmp_path))
    assert str(tmp_path) in str(e.value) and "overwrite=true" in str(e.value)
    assert _snapshot(tmp_path) == before


def test_the_same_finished_run_again_is_a_no_op(tmp_path):
    first = train(compose_config(RUN, tmp_path))
    before = _snapshot(tmp_path)
    mtimes = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    again = train(compose_config(RUN, tmp_path))
    assert again == json.loads((tmp_path / "metrics.json").read_text())
    assert again["steps"] == first["steps"] == 4
    assert _snapshot(tmp_path) == before
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()} == mtimes


def test_overwrite_true_starts_the_run_over(tmp_path):
    train(compose_config(RUN, tmp_path))  # finished, with its final checkpoint
    # Another seed: without overwrite this would be a refused resume (another config).
    metrics = train(compose_config([*RUN, "seed=1", "overwrite=true"], tmp_path))
    assert metrics["steps"] == 4
    assert checkpoint_step(find_checkpoint(tmp_path)) == 4
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["seed"] == 1 and saved["overwrite"] is True


def test_overwrite_and_resume_together_are_refused(tmp_path):
    cfg = compose_config([*RUN, "overwrite=true", f"resume={tmp_path}"], tmp_path)
    with pytest.raises(ValueError, match="overwrite=true starts the run over, resume="):
        train(cfg)
