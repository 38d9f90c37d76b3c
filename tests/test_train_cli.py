"""train.py as a user runs it: a real subprocess, a real Hydra run and multirun folder."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TINY_RUN

ROOT = Path(__file__).resolve().parents[1]


def _run(args, timeout=300):
    result = subprocess.run(
        [sys.executable, "train.py", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_train_py_single_run(tmp_path):
    _run(["sae=topk", *TINY_RUN, f"hydra.run.dir={tmp_path}"])
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["steps"] == 20 and 0 < metrics["val/fvu"] < 2
    assert (tmp_path / "sae" / "cfg.json").is_file()
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


@pytest.mark.slow
def test_train_py_multirun_sweeps_families(tmp_path):
    _run(["-m", "sae=jumprelu,relu", *TINY_RUN, f"hydra.sweep.dir={tmp_path}"])
    runs = sorted(p for p in tmp_path.iterdir() if p.is_dir() and (p / "metrics.json").exists())
    assert len(runs) == 2
    archs = {json.loads((r / "sae" / "cfg.json").read_text())["architecture"] for r in runs}
    assert archs == {"jumprelu", "standard"}  # SAELens's names: ReLU is its "standard" SAE


@pytest.mark.slow
def test_train_py_bad_value_fails_with_the_key(tmp_path):
    result = subprocess.run(
        [sys.executable, "train.py", "sae=topk", "sae.k=100000", f"hydra.run.dir={tmp_path}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "sae.k=100000 is invalid" in result.stderr
    assert not (tmp_path / "checkpoints").exists(), "nothing may run before the config is valid"
