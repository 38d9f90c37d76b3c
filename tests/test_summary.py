"""The end-of-run summary and the sweep report on a run whose site barely matters to the LM:
CE loss recovered divides by the cost of zero-ablating the site, so where that cost is tiny the
ratio is flagged beside the number, and delta LM loss and KL lead."""

from __future__ import annotations

import json

from saelab.report import markdown, read_runs
from saelab.summary import run_summary

# The held-out figures of `python train.py sae=jumprelu site=mlp layer=20` on tiny-gemma-2:
# zero-ablating that MLP costs the LM 0.006 nats, so CE loss recovered comes out as 1.030.
NEGLIGIBLE_SITE = {
    "eval/tokens": 6119.0,
    "eval/l0": 32.1,
    "eval/fvu": 0.0912,
    "eval/delta_lm_loss": -0.0002,
    "eval/kl_div": 0.0011,
    "eval/ce_clean": 3.7100,
    "eval/ce_spliced": 3.7098,
    "eval/ce_zero_ablation": 3.7160,
    "eval/ce_loss_recovered": 1.030,
    "eval/dead_fraction": 0.0098,
    "val/l0": 33.0,
    "val/fvu": 0.1,
    "val/dead_fraction": 0.0,
    "steps": 2000,
}


def _held_out(summary: str) -> list[str]:
    lines = summary.splitlines()
    start = next(i for i, line in enumerate(lines) if "held-out text" in line)
    end = next(i for i, line in enumerate(lines) if "validation batches" in line)
    return lines[start + 1 : end]


def test_ce_loss_recovered_is_flagged_where_ablating_the_site_costs_almost_nothing(tmp_path):
    figures = _held_out(run_summary(tmp_path, NEGLIGIBLE_SITE, [""], exported=True))
    assert figures[0].lstrip().startswith("delta LM loss -0.0002 nats  KL 0.0011")
    assert "CE loss recovered" not in figures[0]  # not beside the trustworthy figures
    note = " ".join(figures[1:])
    assert "CE loss recovered 1.030" in note and "not meaningful" in note
    assert "0.0060 nats" in note  # the ablation cost it divides by


def test_ce_loss_recovered_stands_where_ablating_the_site_hurts(tmp_path):
    metrics = {**NEGLIGIBLE_SITE, "eval/ce_zero_ablation": 8.0, "eval/ce_loss_recovered": 0.992}
    figures = _held_out(run_summary(tmp_path, metrics, [""], exported=True))
    assert "CE loss recovered 0.992" in figures[0]
    assert "not meaningful" not in "\n".join(figures)


def test_the_report_flags_the_same_ratio(tmp_path):
    run = tmp_path / "run"
    (run / "sae").mkdir(parents=True)
    (run / "sae" / "cfg.json").write_text(json.dumps({"architecture": "jumprelu"}))
    config = {
        "sae": {"d_in": 128, "expansion_factor": 8, "target_l0": 32},
        "data": {"model": {"name_or_path": "tiny-gemma-2"}, "site": "mlp"},
        "layer": 20,
    }
    (run / "config.json").write_text(json.dumps(config))
    (run / "metrics.json").write_text(json.dumps(NEGLIGIBLE_SITE))
    evaluation = {k.removeprefix("eval/"): v for k, v in NEGLIGIBLE_SITE.items() if "eval/" in k}
    (run / "eval.json").write_text(json.dumps(evaluation))
    table = markdown(read_runs(run))
    assert "| 1.03* |" in table
    assert "* CE loss recovered is not meaningful" in table and "0.006 nats" in table
