"""bench/robustness.py skips a run only when a finished row was configured the same way: the
fingerprint follows the family's resolved defaults, not the variant's name."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from saelab.sae.jumprelu import PREACT_COEFFICIENT, JumpReLUExperimental

ROOT = Path(__file__).resolve().parents[2]


def _bench():
    spec = importlib.util.spec_from_file_location("robustness", ROOT / "bench" / "robustness.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_fingerprint_follows_resolved_values_not_how_they_were_written():
    bench = _bench()
    base, _ = bench.overrides_for("syn-plc", "jumprelu", [], 1024 * 10, 0)
    plain = bench.recipe(base)
    window = JumpReLUExperimental.__dataclass_fields__["preact_window"].default
    # The default written out is the same run, and so is a None the family's dataclass resolves.
    assert bench.recipe([*base, f"sae.experimental.preact_window={window}"]) == plain
    assert bench.recipe([*base, f"sae.preact_coefficient={PREACT_COEFFICIENT}"]) == plain
    # Any value that differs, in the family or elsewhere, is a different run.
    assert bench.recipe([*base, f"sae.experimental.preact_window={window * 10}"]) != plain
    assert bench.recipe([*base, "data.seed=5"]) != plain
    topk, _ = bench.overrides_for("syn-plc", "topk", [], 1024 * 10, 0)
    assert bench.recipe(topk) != plain


@pytest.mark.slow
def test_a_finished_run_is_skipped_and_an_older_row_is_not_taken_for_it(tmp_path):
    bench = _bench()
    results = tmp_path / "results.jsonl"
    # A row from before fingerprints, for the same cell, family, tokens and seed.
    old = {"cell": "syn-plc", "family": "jumprelu", "variant": "", "tokens": 10240, "seed": 0}
    bench.append_result(results, old)
    args = ["--cells", "syn-plc", "--families", "jumprelu", "--budgets", "10240"]
    args += ["--results", str(results)]
    bench.main(args)
    rows = bench.load_results(results)
    assert len(rows) == 2 and rows[1]["recipe"]  # it ran despite the older row
    bench.main(args)
    assert len(bench.load_results(results)) == 2  # and is not run again


def test_targets_compare_jumprelu_with_topk_on_the_issue_criteria():
    bench = _bench()
    row = {"dead": 0.005, "L0": 33.0, "target_l0": 32, "FVU": 0.08, "dLM": 0.04, "recov": None}
    topk = {**row, "dead": 0.0, "L0": 32.0, "FVU": 0.09, "dLM": 0.03}
    t = bench.targets(row, topk)
    assert t["dead <= 1%"].startswith("yes") and t["L0 within 5%"].startswith("yes")
    assert t["FVU <= TopK"].startswith("yes") and t["dLM or recovered vs TopK"].startswith("**no")
    synthetic = {**row, "dLM": None, "recov": 0.4, "L0": 12.0, "target_l0": 13, "dead": 0.02}
    t = bench.targets(synthetic, {**synthetic, "recov": 0.5})
    assert t["dead <= 1%"].startswith("**no") and t["L0 within 5%"].startswith("**no")
    assert t["dLM or recovered vs TopK"] == "**no** (recovered 40.0% vs 50.0%)"


def test_the_seed_spread_groups_runs_that_differ_only_in_seed():
    bench = _bench()
    base = {"cell": "syn-iid", "tokens": 3072, "family": "jumprelu", "variant": ""}
    base |= {"L0": 8.0, "dLM": None, "recov": 0.9}
    rows = [
        {**base, "seed": 0, "FVU": 0.30, "dead": 0.02},
        {**base, "seed": 1, "FVU": 0.34, "dead": 0.00},
        {**base, "seed": 2, "FVU": 0.32, "dead": 0.07, "recov": 0.6},
        {**base, "variant": "kp0", "seed": 0, "FVU": 0.1, "dead": 0.0},  # one seed: no spread
    ]
    (spread,) = bench.seed_spread(rows)
    assert spread["seeds"] == [0, 1, 2] and spread["variant"] == ""
    mean, low, high = spread["FVU"]
    assert (round(mean, 6), low, high) == (0.32, 0.30, 0.34)
    assert spread["dead"][1:] == (0.0, 0.07) and spread["recov"][1:] == (0.6, 0.9)


def test_a_curve_run_validates_every_n_steps_and_is_its_own_recipe():
    bench = _bench()
    plain, _ = bench.overrides_for("syn-plc", "jumprelu", [], 1024 * 10, 0)
    curve, _ = bench.overrides_for("syn-plc", "jumprelu", [], 1024 * 10, 0, curve=5)
    assert [o for o in curve if o.startswith("logger=")] == ["logger=tensorboard"]
    assert "trainer.val_check_interval=5" in curve and "trainer.val_check_interval=10" in plain
    assert bench.recipe(curve) != bench.recipe(plain)


@pytest.mark.slow
def test_a_curve_is_read_back_from_the_run(tmp_path, capsys):
    bench = _bench()
    results = tmp_path / "results.jsonl"
    args = ["--cells", "syn-plc", "--families", "topk", "--budgets", "10240", "--curve", "5"]
    bench.main([*args, "--results", str(results)])
    (row,) = bench.load_results(results)
    assert [p["step"] for p in row["curve"]] == [4, 9]  # Lightning logs validation at step - 1
    last = row["curve"][-1]
    assert last["FVU"] == pytest.approx(row["FVU"]) and last["recov"] == pytest.approx(row["recov"])
    assert "validation during training" in capsys.readouterr().out


def test_a_curve_point_carries_the_thresholds_last_logged_at_or_before_it(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path))
    for step in (0, 3, 6, 9):  # training logs every 3 steps
        writer.add_scalar("train/threshold/max", 10.0 + step, step)
        writer.add_scalar("train/l0_multiplier", -step, step)
    for step in (4, 9, 10):  # validation; step 10 is the end-of-run repeat of step 9
        writer.add_scalar("val/fvu", 0.5 if step == 4 else 0.25, step)
    writer.close()
    curve = _bench().read_curve(str(tmp_path))
    assert [p["step"] for p in curve] == [4, 9]
    assert [p["theta_max"] for p in curve] == [13.0, 19.0]
    assert [p["lambda"] for p in curve] == [-3.0, -9.0]
    assert "theta_median" not in curve[0], "a tag the run did not log is left out"


def test_every_family_of_a_cell_trains_at_jumprelus_lr_for_that_cell():
    """JumpReLU's default lr follows d_in; TopK and BatchTopK must follow it cell by cell, or the
    matrix would compare families at different step sizes."""
    from omegaconf import OmegaConf

    from tests.conftest import compose_config

    bench = _bench()
    seen = set()
    for cell in ("syn-plc", "gemma-resid-L6"):
        lrs = {}
        for family in ("jumprelu", "topk", "batchtopk"):
            overrides, _ = bench.overrides_for(cell, family, [], 1024 * 10, 0)
            lrs[family] = OmegaConf.to_object(compose_config(overrides, "/x").sae).lr
        assert lrs["topk"] == lrs["batchtopk"] == pytest.approx(lrs["jumprelu"]), (cell, lrs)
        seen.add(round(lrs["jumprelu"], 8))
    assert len(seen) == 2  # 64 and 128 dimensions: two lrs, so the test sees the rule act
