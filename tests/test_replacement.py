"""The replacement model: every layer's transcoder in place of its MLP at once. A one-layer
replacement equals that transcoder's own spliced evaluation; transcoders that write zeros equal
zero-ablating every MLP; a real sweep of trained transcoders evaluates through evaluate.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from saelab.evaluation import evaluate_on_validation
from saelab.replacement import evaluate_replacement
from tests.conftest import compose_config, lm_run_overrides, make_sae

ROOT = Path(__file__).resolve().parents[1]


def _data_cfg(llama_dir, tmp_path):
    cfg = compose_config(lm_run_overrides(llama_dir, "transcoder", tmp_path / "cache"), tmp_path)
    return OmegaConf.to_object(cfg.data)


def _transcoder(scale=0.05):
    sae = make_sae("jumprelu", d_in=32, d_sae=64, transcoder=True).eval()
    with torch.no_grad():
        sae.W_dec.mul_(scale)
    return sae


def test_one_layer_replaced_is_that_transcoders_own_splice(llama_dir, tmp_path):
    data_cfg = _data_cfg(llama_dir, tmp_path)
    sae = _transcoder()
    single = evaluate_on_validation(sae, data_cfg, 256, progress=False)
    replaced = evaluate_replacement({2: sae}, data_cfg, 256, progress=False)
    assert replaced["ce_replaced"] == pytest.approx(single["ce_spliced"], rel=1e-6)
    assert replaced["ce_zero_ablation"] == pytest.approx(single["ce_zero_ablation"], rel=1e-6)
    assert replaced["lm_targets"] == single["lm_targets"]


def test_transcoders_that_write_zeros_are_every_mlp_ablated(llama_dir, tmp_path):
    data_cfg = _data_cfg(llama_dir, tmp_path)
    saes = {layer: _transcoder(scale=0.0) for layer in range(3)}
    for sae in saes.values():
        sae.b_dec.data.zero_()
    zeros = evaluate_replacement(saes, data_cfg, 256, progress=False)
    assert zeros["ce_replaced"] == pytest.approx(zeros["ce_zero_ablation"], rel=1e-6)
    assert zeros["ce_zero_ablation"] != zeros["ce_clean"]  # the ablation did something
    assert zeros["layers"] == [0, 1, 2]


@pytest.mark.slow
def test_evaluate_py_on_a_sweep_of_transcoders_scores_the_replacement_model(llama_dir, tmp_path):
    from saelab.runner import train

    sweep = tmp_path / "sweep"
    for layer in range(3):
        overrides = [*lm_run_overrides(llama_dir, "transcoder", tmp_path / "cache")]
        overrides += [f"layer={layer}", "logger=none", "eval_tokens=0"]
        train(compose_config(overrides, sweep / str(layer)))
    result = subprocess.run(
        [sys.executable, str(ROOT / "evaluate.py"), str(sweep), "--tokens", "256"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    written = json.loads((sweep / "replacement_eval.json").read_text())
    assert written["layers"] == [0, 1, 2] and written["lm_targets"] > 256
    assert written["ce_replaced"] != written["ce_clean"]
    assert "replacement_eval.json" in result.stdout
