"""JumpReLU's recipe decays the learning rate linearly to 0 over the second half of the run (the
per-latent part after the threshold warm-up lies within it), so late threshold moves shrink to
nothing (docs/maths.md §8.7, §9.1); `sae=jumprelu_paper` keeps the paper's constant lr."""

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


def test_the_recipe_decays_the_lr_to_zero_over_the_runs_second_half(tmp_path):
    module, group = _fitted(tmp_path, "jumprelu")
    start = round((1 - module.cfg.lr_decay_fraction) * STEPS)
    assert start == STEPS // 2
    assert start <= module.cfg.threshold_warmup_fraction * STEPS, "the per-latent part decays"
    factor = module.lr_lambda()
    assert factor(start) == pytest.approx(1.0)  # the full lr until the decay starts
    assert factor(start + (STEPS - start) // 2) == pytest.approx(0.5)
    assert group["lr"] == pytest.approx(0.0, abs=1e-12)  # the trained run ended at lr 0
    assert group["initial_lr"] > 0


def test_the_papers_recipe_keeps_a_constant_lr(tmp_path):
    module, group = _fitted(tmp_path, "jumprelu_paper")
    assert module.cfg.lr_decay_fraction == 0.0
    assert group["lr"] == pytest.approx(group["initial_lr"])
