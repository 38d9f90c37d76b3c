"""report.py on a real Hydra multirun (train.py subprocess, synthetic data): one CSV row per run
with that run's own numbers, the family read from Hydra's choices, readable Pareto PNGs; and
the equal-L0 interpolation on curves whose value at any L0 is known in closed form."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import pytest

from saelab.report import interpolate_at, shared_l0s
from tests.conftest import TINY_RUN, run_script

ROOT = Path(__file__).resolve().parents[1]


def test_interpolation_is_linear_in_log_l0_and_never_extrapolates():
    def curve(l0):  # a straight line in log L0, so interpolation must be exact
        return 0.5 - 0.1 * math.log(l0)

    points = [(l0, curve(l0)) for l0 in (4.0, 16.0, 64.0)]
    for l0 in (4.0, 5.5, 16.0, 40.0, 64.0):
        assert interpolate_at(points, l0) == pytest.approx(curve(l0))
    assert math.isnan(interpolate_at(points, 3.9)) and math.isnan(interpolate_at(points, 65.0))
    assert interpolate_at(list(reversed(points)), 8.0) == pytest.approx(curve(8.0))  # order-free


def test_shared_l0s_lie_inside_every_family_range():
    curves = {"a": [(4.0, 0), (100.0, 0)], "b": [(10.0, 0), (50.0, 0)], "c": [(8.0, 0), (30.0, 0)]}
    anchors = shared_l0s(curves, n=3)
    assert len(anchors) == 3 and all(10.0 < a < 30.0 for a in anchors)
    assert shared_l0s({"a": [(1.0, 0), (2.0, 0)], "b": [(3.0, 0), (4.0, 0)]}) == []  # disjoint


@pytest.mark.slow
def test_report_collects_a_real_multirun(tmp_path):
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "train.py", "-m", "sae=topk,relu", *TINY_RUN, f"hydra.sweep.dir={sweep}"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    done = subprocess.run(
        [sys.executable, "report.py", str(sweep), "--out", str(tmp_path / "report")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    with open(tmp_path / "report" / "runs.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["family"] for r in rows) == ["relu", "topk"]
    for row in rows:  # each row carries its own run's numbers (synthetic data: validation metrics)
        metrics = json.loads((Path(row["run"]) / "metrics.json").read_text())
        assert float(row["l0"]) == pytest.approx(metrics["val/l0"])
        assert float(row["fvu"]) == pytest.approx(metrics["val/fvu"])
        assert row["source"] == "val" and int(row["steps"]) == metrics["steps"]
    topk = next(r for r in rows if r["family"] == "topk")
    config = json.loads((Path(topk["run"]) / "config.json").read_text())
    assert topk["knob"] == "k" and float(topk["knob_value"]) == config["sae"]["k"]
    assert "| topk | k=" in (tmp_path / "report" / "report.md").read_text()
    assert matplotlib.image.imread(tmp_path / "report" / "pareto_fvu.png").ndim == 3


def test_report_on_a_folder_without_runs_says_what_it_expected(tmp_path, capsys):
    code = run_script("report.py", str(tmp_path))  # report.py as a program: the test above
    assert code != 0 and "metrics.json" in capsys.readouterr().err


@pytest.mark.slow
def test_report_lists_each_member_of_a_several_sae_pass(tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "train.py", "multi=l0_sweep", *TINY_RUN, f"hydra.run.dir={run}"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert run_script("report.py", str(run)) == 0
    with open(run / "runs.csv") as f:
        rows = {Path(r["run"]).name: r for r in csv.DictReader(f)}
    config = json.loads((run / "config.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(rows) == set(config["multi"]["saes"])
    for name, row in rows.items():
        assert row["knob"] == "target_l0"
        assert float(row["knob_value"]) == pytest.approx(config["multi"]["saes"][name]["target_l0"])
        assert float(row["l0"]) == pytest.approx(metrics[f"{name}/val/l0"])
