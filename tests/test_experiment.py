"""conf/experiment/paper_pareto.yaml: every job of its sweep composes to the family it names,
with that level's sparsity knob, and the matched settings (width, lr, tokens, evaluation)."""

from __future__ import annotations

import itertools

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from saelab.config import register_configs
from saelab.runner import build
from tests.conftest import CONF_DIR, compose_config

KNOB = {"jumprelu": "target_l0", "gated": "l1_coefficient", "topk": "k", "relu": "l1_coefficient"}
LR = {
    "jumprelu": 3e-3,
    "topk": 3e-3,
    "gated": 1e-3,
    "relu": 1e-3,
}  # see conf/experiment/paper_pareto.yaml


def _sweep_params() -> dict[str, list[str]]:
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            config_name="config", overrides=["+experiment=paper_pareto"], return_hydra_config=True
        )
    return {k: str(v).split(",") for k, v in cfg.hydra.sweeper.params.items()}


def test_paper_pareto_sweeps_four_families_four_levels_three_sites():
    params = _sweep_params()
    assert sorted(params["pareto"]) == sorted(KNOB)
    assert len(params["level"]) >= 4 and sorted(params["site"]) == ["attn", "mlp", "resid"]


@pytest.mark.slow
def test_every_paper_pareto_job_composes_with_its_knob(tmp_path):
    params = _sweep_params()
    for family, site in itertools.product(params["pareto"], params["site"]):
        values = []
        for level in params["level"]:
            cfg = compose_config(
                ["+experiment=paper_pareto", f"pareto={family}", f"level={level}", f"site={site}"],
                tmp_path,
            )
            sae = OmegaConf.to_object(cfg.sae)
            assert sae.architecture == family and cfg.data.site == site and cfg.layer == 12
            assert (
                sae.expansion_factor == 8 and sae.lr == LR[family] and cfg.trainer.max_steps == 250
            )
            assert cfg.eval_tokens == 6119
            values.append(getattr(sae, KNOB[family]))
        # levels aim at increasing L0: k / target_l0 rise, L1 coefficients fall
        expected = sorted(values, reverse=KNOB[family] == "l1_coefficient")
        assert values == expected and len(set(values)) == len(values)
    _, module = build(cfg)  # the last one instantiates for real
    assert module.sae.d_sae == 8 * cfg.data.d_in
