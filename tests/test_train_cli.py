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


# --- any model folder, the end-of-run summary, the step progress bar -------------------------
def _lm_run(model_dir, site, cache_dir) -> list[str]:
    """A tiny data=activations run on ``model_dir``: no shape key anywhere."""
    return [
        f"model.name_or_path={model_dir}",
        f"site={site}",
        "layer=2",
        "data.context_length=64",
        "data.train_tokens=4096",
        "data.val_tokens=1024",
        "data.batch_size=512",
        "data.shard_tokens=2048",
        "data.device=cpu",
        f"data.cache_dir={cache_dir}",
        "sae.expansion_factor=4",
        "sae.normalization_tokens=2048",
        "trainer.max_steps=20",
        "trainer.val_check_interval=10",
        "trainer.limit_val_batches=2",
        "logger=none",
        "eval_tokens=128",
    ]


@pytest.mark.slow
def test_a_llama_folder_trains_with_no_shape_keys_and_the_run_ends_with_its_summary(
    tmp_path, llama_dir
):
    run = tmp_path / "run"
    result = _run([*_lm_run(llama_dir, "resid", tmp_path / "cache"), f"hydra.run.dir={run}"])
    metrics = json.loads((run / "metrics.json").read_text())
    assert json.loads((run / "sae" / "cfg.json").read_text())["d_in"] == 32
    summary = result.stdout[result.stdout.index("saelab: finished") :]
    assert f"finished at step 20. Run folder: {run}" in summary
    assert f"SAE {run / 'sae'}" in summary
    expected = (
        f"L0 {metrics['val/l0']:.1f}  FVU {metrics['val/fvu']:.4f}  "
        f"delta LM loss {metrics['eval/delta_lm_loss']:.4f}  "
        f"dead {100 * metrics['val/dead_fraction']:.1f}%"
    )
    assert expected in summary
    # The progress bar counts optimiser steps of max_steps, not epochs of an unsized stream.
    bars = result.stdout + result.stderr  # Lightning's bars write to stdout
    assert "training steps" in bars and "20/20" in bars
    assert "Epoch" not in bars


@pytest.mark.slow
@pytest.mark.parametrize("site", ["mlp", "attn"])
def test_a_llama_folder_trains_at_its_other_sites(tmp_path, llama_dir, site):
    from saelab.runner import train
    from tests.conftest import compose_config

    cfg = compose_config(_lm_run(llama_dir, site, tmp_path / "cache"), tmp_path / "run")
    metrics = train(cfg)
    assert metrics["steps"] == 20 and 0 < metrics["val/fvu"] < 2
    assert json.loads((tmp_path / "run" / "sae" / "cfg.json").read_text())["d_in"] == 32


@pytest.mark.slow
def test_a_multi_sae_run_summarises_every_member(tmp_path):
    result = _run(
        [
            *TINY_RUN,
            "multi=l0_sweep",
            f"hydra.run.dir={tmp_path}",
        ]
    )
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    for name in ("l0_16", "l0_32", "l0_64"):
        assert f"{name}: SAE {tmp_path / 'sae' / name}" in result.stdout
        line = f"L0 {metrics[f'{name}/val/l0']:.1f}  FVU {metrics[f'{name}/val/fvu']:.4f}  "
        assert line + "delta LM loss n/a" in result.stdout  # synthetic data: no LM
