"""JumpReLU's recipe decays the learning rate to 0 over its per-latent half (after the threshold
warm-up hands over), so late threshold moves shrink to nothing (docs/maths.md §8.7, §9.1);
`sae=jumprelu_paper` keeps the paper's constant lr."""

from __future__ import annotations

import pytest

from saelab.runner import build
from tests.conftest import TINY_RUN, compose_config, fit_module

STEPS = 20


def _fitted(tmp_path, preset: str):
    cfg = compose_config([*TINY_RUN, "logger=none", f"sae={preset}"], tmp_path / preset)
    datamodule, module = build(cfg)
    trainer = fit_module(datamodule, module, steps=STEPS)
    return module, trainer.optimizers[0].param_groups[0]


def test_the_recipe_holds_the_lr_through_the_warm_up_then_decays_it_to_zero(tmp_path):
    module, group = _fitted(tmp_path, "jumprelu")
    handover = round(module.cfg.threshold_warmup_fraction * STEPS)
    factor = module.lr_lambda()
    assert factor(handover) == pytest.approx(1.0)  # the whole warm-up at the full lr
    assert factor(handover + (STEPS - handover) // 2) == pytest.approx(0.5)
    assert group["lr"] == pytest.approx(0.0, abs=1e-12)  # the trained run ended at lr 0
    assert group["initial_lr"] > 0


def test_the_papers_recipe_keeps_a_constant_lr(tmp_path):
    module, group = _fitted(tmp_path, "jumprelu_paper")
    assert module.cfg.lr_decay_fraction == 0.0
    assert group["lr"] == pytest.approx(group["initial_lr"])
