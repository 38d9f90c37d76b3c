"""train.py as a user runs it: a real subprocess, a real Hydra run and multirun folder."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TINY_RUN, compose_config, lm_run_overrides

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


def _bad_value(run_dir: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "train.py", "sae=topk", "sae.k=100000", f"hydra.run.dir={run_dir}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=None if env is None else {**os.environ, **env},
    )


@pytest.mark.slow
def test_train_py_bad_value_fails_with_one_line_and_leaves_no_run_folder(tmp_path):
    result = _bad_value(tmp_path / "run")
    assert result.returncode != 0
    message = "sae.k=100000 is invalid: it must be an integer in [1, d_sae=1024]."
    assert result.stderr.strip().splitlines() == [f"Error: {message}"]
    assert "Traceback" not in result.stdout + result.stderr
    assert not (tmp_path / "run").exists(), "a config that never ran leaves no run folder"


@pytest.mark.slow
def test_hydra_full_error_shows_the_traceback_of_a_bad_value(tmp_path):
    result = _bad_value(tmp_path / "run", env={"HYDRA_FULL_ERROR": "1"})
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "sae.k=100000 is invalid" in result.stderr


# --- any model folder, the end-of-run summary, the step progress bar -------------------------
def _lm_run(model_dir, site, cache_dir) -> list[str]:
    return [*lm_run_overrides(model_dir, site, cache_dir), "logger=none"]


def _summary(stdout: str) -> str:
    return stdout[stdout.index("saelab: finished") :]


@pytest.mark.slow
def test_a_llama_folder_trains_with_no_shape_keys_and_the_run_ends_with_its_summary(llama_run):
    run, result = llama_run
    assert json.loads((run / "sae" / "cfg.json").read_text())["d_in"] == 32
    summary = _summary(result.stdout)
    assert f"finished at step 20. Run folder: {run}" in summary
    assert f"SAE {run / 'sae'}" in summary
    # The progress bar counts optimiser steps of max_steps, not epochs of an unsized stream.
    bars = result.stdout + result.stderr  # Lightning's bars write to stdout
    assert "training steps" in bars and "20/20" in bars
    assert "Epoch" not in bars


@pytest.mark.slow
def test_the_summary_leads_with_the_held_out_numbers_that_report_and_tensorboard_show(
    llama_run, tmp_path
):
    """One figure, one source: the summary's held-out line is eval.json's, labelled as such, and
    report.py's row and TensorBoard's eval/ scalars say the same; validation is labelled too."""
    run, result = llama_run
    evaluation = json.loads((run / "eval.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    lines = _summary(result.stdout).splitlines()
    held_out = next(i for i, line in enumerate(lines) if "held-out text" in line)
    validation = next(i for i, line in enumerate(lines) if "validation batches" in line)
    assert held_out < validation, "the held-out evaluation comes first"
    assert f"{evaluation['tokens']:,} tokens" in lines[held_out] and "eval.json" in lines[held_out]
    figures = lines[held_out + 1]
    assert figures.lstrip().startswith(f"delta LM loss {evaluation['delta_lm_loss']:.4f}")
    for shown in (
        f"KL {evaluation['kl_div']:.4f}",
        f"L0 {evaluation['l0']:.1f}",
        f"FVU {evaluation['fvu']:.4f}",
        f"dead {100 * evaluation['dead_fraction']:.1f}%",
    ):
        assert shown in figures
    assert f"L0 {metrics['val/l0']:.1f}  FVU {metrics['val/fvu']:.4f}" in lines[validation + 1]

    done = subprocess.run(
        [sys.executable, "report.py", str(run), "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    with open(tmp_path / "runs.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert row["source"] == "eval"
    assert f"L0 {float(row['l0']):.1f}" in figures
    assert f"dead {100 * float(row['dead_fraction']):.1f}%" in figures

    scalars = _tensorboard_scalars(run / "tensorboard")
    for key in ("l0", "fvu", "delta_lm_loss", "kl_div", "dead_fraction"):
        assert scalars[f"eval/{key}"] == pytest.approx(evaluation[key], rel=1e-5), key
        assert metrics[f"eval/{key}"] == pytest.approx(evaluation[key], rel=1e-5), key


@pytest.mark.slow
def test_the_default_evaluation_reads_the_validation_rows_so_the_two_agree(llama_run):
    """eval_tokens=null evaluates exactly the data.val_tokens rows the validation batches hold
    (not whole batches of contexts rounded up), so the summary's two L0/FVU pairs are one."""
    run, result = llama_run
    evaluation = json.loads((run / "eval.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    assert evaluation["tokens"] == 1024  # data.val_tokens of lm_run_overrides
    assert evaluation["lm_targets"] >= evaluation["tokens"]  # whole contexts for the LM
    for key in ("l0", "fvu", "dead_fraction", "relative_reconstruction_bias"):
        assert evaluation[key] == pytest.approx(metrics[f"val/{key}"], rel=1e-4, abs=1e-6), key
    assert "the rows the evaluation's L0 and FVU read, so they agree" in _summary(result.stdout)


@pytest.mark.slow
def test_a_summary_over_part_of_the_validation_rows_says_its_rows_differ(
    llama_dir, tmp_path, capsys
):
    """trainer.limit_val_batches=1 validates one batch (512 of the 1,024 validation rows, a
    shuffled sample): the evaluation still reads all 1,024, and the summary does not claim the
    two agree."""
    from saelab.runner import train

    overrides = [*lm_run_overrides(llama_dir, "resid", tmp_path / "cache")]
    cfg = compose_config(
        [*overrides, "trainer.limit_val_batches=1", "logger=none"], tmp_path / "run"
    )
    metrics = train(cfg)
    assert metrics["val_tokens"] == 512 and metrics["eval/tokens"] == 1024
    summary = capsys.readouterr().out
    assert "512 rows, other than the evaluation's" in summary and "so they agree" not in summary


def _tensorboard_scalars(folder: Path) -> dict[str, float]:
    """The last value of each scalar in the run's event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values = {}
    for events in sorted(folder.rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            values[tag] = acc.Scalars(tag)[-1].value
    return values


NOISE = (
    "Tip:",  # Lightning's advertisements
    "GPU available",
    "TPU available",
    "limit_val_batches",
    "FLOPs",  # the model-summary table
    "Trainer.fit` stopped",
    "Seed set",
    "Warning",
    "deprecated",
    "Validation",  # one bar per phase: no bar per validation
)


@pytest.mark.slow
def test_the_console_is_quiet_and_a_logged_console_has_no_escape_codes(llama_run):
    """What a run prints to a file (stdout and stderr not terminals): none of Lightning's tips
    and notices, no carriage returns or escape codes, and a training bar that ends at 100%."""
    _, result = llama_run
    console = result.stdout + result.stderr
    for noise in NOISE:
        assert noise not in console, noise
    assert "\r" not in console and "\x1b[" not in console
    training = [line for line in console.splitlines() if line.startswith("training steps")]
    assert training and "20/20" in training[-1] and "100%" in training[-1]


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
    summary = _summary(result.stdout)
    assert "held-out" not in summary.replace("no held-out", "")  # synthetic data: no LM
    for name in ("l0_16", "l0_32", "l0_64"):
        assert f"{name}: SAE {tmp_path / 'sae' / name}" in summary
        line = f"L0 {metrics[f'{name}/val/l0']:.1f}  FVU {metrics[f'{name}/val/fvu']:.4f}  "
        assert line + f"dead {100 * metrics[f'{name}/val/dead_fraction']:.1f}%" in summary
