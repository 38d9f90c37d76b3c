"""Transcoders trained by the real Lightning trainer: on a synthetic pair whose sparse map from x
to y is known every family recovers the map's output directions; a skip transcoder learns a
dense linear part a plain one cannot; on an LM the run caches [MLP input | MLP output], trains,
evaluates with the transcoder in place of the MLP and exports the raw map."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from saelab.metrics import feature_recovery
from saelab.runner import build, train
from saelab.sae import load_sae
from tests.conftest import FAMILIES, compose_config, fit_module, lm_run_overrides

PAIRS = [
    "site=transcoder",
    "data=synthetic",
    "data.pairs=true",
    "data.d_in=32",  # [x | y], 16 each
    "data.n_features=16",
    "data.mean_l0=2",
    "data.batch_size=256",
    "data.val_tokens=1024",
    "sae.expansion_factor=2",
    "sae.normalization_tokens=2048",
    "sae.lr=1e-2",
]
# Each family's sparsity at the data's L0 of 2 (the fixed-penalty families: a penalty that
# leaves latents alive at this scale).
SPARSITY = {
    "jumprelu": ["sae.target_l0=2"],
    "topk": ["sae.k=2"],
    "batchtopk": ["sae.k=2"],
    "matryoshka": ["sae.k=2"],
    "matryoshka_jumprelu": ["sae.target_l0=2"],
    "relu": ["sae.l1_coefficient=0.3"],
    "gated": [],
}


def _fvu(y, y_hat) -> float:
    return float((y - y_hat).pow(2).sum() / (y - y.mean(0)).pow(2).sum())


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_recovers_a_known_sparse_map(family, tmp_path):
    cfg = compose_config([f"sae={family}", *PAIRS, *SPARSITY[family]], tmp_path)
    datamodule, module = build(cfg)
    assert module.sae.transcoder and module.sae.d_in == 16
    fit_module(datamodule, module, steps=800)
    sae = module.export_sae().eval()
    x, y = sae.split(datamodule.val_set[0])
    with torch.no_grad():
        y_hat = sae.reconstruct(x)
    assert _fvu(y, y_hat) < 0.25
    outputs = feature_recovery(sae.W_dec, datamodule.true_features)
    inputs = feature_recovery(sae.W_dec, datamodule.truth.inputs)
    # The decoder holds the map's OUTPUT directions, not the input ones it reads.
    assert outputs["mmcs"] > 0.9 and outputs["mmcs"] > inputs["mmcs"] + 0.2


def _dense_pair_file(path, n=8192, d=16, seed=0):
    """[x | y] with y = a sparse map of x's features plus a dense linear map of x."""
    g = torch.Generator().manual_seed(seed)
    F_in = torch.nn.functional.normalize(torch.randn(32, d, generator=g), dim=1)
    F_out = torch.nn.functional.normalize(torch.randn(32, d, generator=g), dim=1)
    S = torch.randn(d, d, generator=g) / d**0.5
    coeffs = (torch.rand(n, 32, generator=g) < 2 / 32) * (1 + 0.2 * torch.rand(n, 32, generator=g))
    x = coeffs @ F_in + 0.3 * torch.randn(n, d, generator=g)
    y = coeffs @ F_out + x @ S.T
    np.save(path, torch.cat([x, y], 1).numpy())
    return path


@pytest.mark.slow
def test_a_skip_transcoder_learns_the_dense_part_a_plain_one_cannot(tmp_path):
    path = _dense_pair_file(tmp_path / "pairs.npy")
    fvu = {}
    for skip in (False, True):
        overrides = [
            "sae=topk",
            "sae.k=2",
            "site=transcoder",
            "data=files",
            f"data.path={path}",
            "data.batch_size=256",
            "sae.expansion_factor=4",
            "sae.lr=1e-2",
            "sae.normalization_tokens=4096",
            f"sae.skip_connection={str(skip).lower()}",
        ]
        datamodule, module = build(compose_config(overrides, tmp_path / str(skip)))
        fit_module(datamodule, module, steps=400)
        sae = module.export_sae().eval()
        rows = torch.from_numpy(np.load(path))[-1024:]
        x, y = sae.split(rows)
        with torch.no_grad():
            fvu[skip] = _fvu(y, sae.reconstruct(x))
    assert fvu[True] < 0.5 * fvu[False], fvu


def test_the_pairs_and_their_truth_reach_training_unchanged(tmp_path):
    """The rows the trainer splits are the synthetic source's [x | y], x and y built from the
    same coefficients on the input and output directions."""
    cfg = compose_config(["sae=topk", "sae.k=2", *PAIRS], tmp_path)
    datamodule, module = build(cfg)
    truth = datamodule.truth
    generator = torch.Generator().manual_seed(0)
    rows, coeffs = truth.sample(64, generator)
    x, y = module.sae.split(rows)
    torch.testing.assert_close(x, coeffs @ truth.inputs)
    torch.testing.assert_close(y, coeffs @ datamodule.true_features)


@pytest.mark.slow
def test_an_lm_transcoder_run_caches_pairs_evaluates_in_place_of_the_mlp_and_exports(
    llama_dir, tmp_path, capsys
):
    overrides = lm_run_overrides(llama_dir, "transcoder", tmp_path / "cache")
    cfg = compose_config([*overrides, "sae=jumprelu", "logger=none"], tmp_path / "run")
    metrics = train(cfg)
    run = tmp_path / "run"
    cfg_json = json.loads((run / "sae" / "cfg.json").read_text())
    assert cfg_json["architecture"] == "jumprelu_transcoder"
    meta = cfg_json["metadata"]
    assert meta["hook_name"] == "blocks.2.mlp.hook_in"
    assert meta["hook_name_out"] == "blocks.2.hook_mlp_out"
    assert meta["hf_hook_name"] == "model.layers.2.post_attention_layernorm.output"
    assert meta["hf_hook_name_out"] == "model.layers.2.mlp.output"
    assert metrics["target_scale"] > 0 and metrics["activation_scale"] > 0
    assert metrics["target_scale"] != metrics["activation_scale"]
    evaluation = json.loads((run / "eval.json").read_text())
    assert evaluation["tokens"] == 1024
    # The evaluation's FVU is of the MLP's output: the same rows validation scored.
    assert evaluation["fvu"] == pytest.approx(metrics["val/fvu"], rel=1e-4)
    assert evaluation["ce_zero_ablation"] != evaluation["ce_spliced"]
    assert "transcoder in place of the MLP" in capsys.readouterr().out
    sae = load_sae(run / "sae")
    assert sae.transcoder and sae.d_in == 32
