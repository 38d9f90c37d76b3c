"""`sae.experimental.threshold_lr_scale`: JumpReLU's thresholds in their own Adam group at lr x
scale, the rest of the SAE untouched; by default the scale is sqrt(d_in / 256); multi-SAE runs keep
one schedule per group."""

from __future__ import annotations

import pytest
import torch

from saelab.runner import build
from tests.conftest import TINY_RUN, compose_config, fit_module

# No threshold warm-up: its thresholds are set from each batch, not by the optimiser.
RUN = [*TINY_RUN, "logger=none", "sae=jumprelu", "sae.threshold_warmup_fraction=0"]


def _one_step(tmp_path, scale) -> tuple[dict, dict, torch.optim.Optimizer]:
    torch.manual_seed(0)
    datamodule, module = build(
        compose_config([*RUN, f"sae.experimental.threshold_lr_scale={scale}"], tmp_path)
    )
    before = {k: v.detach().clone() for k, v in module.sae.named_parameters()}
    trainer = fit_module(datamodule, module, steps=1)
    after = {k: v.detach().clone() for k, v in module.sae.named_parameters()}
    return before, after, trainer.optimizers[0]


def test_thresholds_step_at_the_scaled_rate_and_nothing_else_changes(tmp_path):
    before, plain, optimizer = _one_step(tmp_path / "plain", 1)  # one lr for all: one group
    assert len(optimizer.param_groups) == 1
    before_s, scaled, optimizer_s = _one_step(tmp_path / "scaled", 0.1)
    for name in before:
        torch.testing.assert_close(before[name], before_s[name])  # the same start
    lrs = [g["lr"] for g in optimizer_s.param_groups]
    assert len(lrs) == 2 and lrs[1] == pytest.approx(0.1 * lrs[0])
    assert optimizer_s.param_groups[1]["params"][0].shape == before["log_threshold"].shape
    # Adam's first step moves each parameter by about lr (times the sign of its gradient).
    step = (plain["log_threshold"] - before["log_threshold"]).abs()
    step_s = (scaled["log_threshold"] - before["log_threshold"]).abs()
    moved = step > 0
    assert moved.any()
    torch.testing.assert_close(step_s[moved], 0.1 * step[moved], rtol=1e-3, atol=1e-9)
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        torch.testing.assert_close(scaled[name], plain[name])


@pytest.mark.parametrize("width", [64, 256])
def test_the_default_scale_takes_the_d_in_factor_off_the_thresholds(tmp_path, width):
    # The thresholds' lr is the lr rule's value at d_in = 256 whatever d_in: lr x sqrt(d_in / 256).
    cfg = compose_config([*RUN, f"data.d_in={width}"], tmp_path)
    _, module = build(cfg)
    groups = module.optimizer_groups()
    lr = module.cfg.lr
    assert lr == pytest.approx(3e-3 * (256 / width) ** 0.5)  # the default lr rule
    theta = module.sae.log_threshold
    threshold_lrs = [g["lr"] for g in groups if any(p is theta for p in g["params"])]
    assert threshold_lrs == [pytest.approx(3e-3)]
    assert len(groups) == (1 if width == 256 else 2)


def test_the_papers_recipe_keeps_one_lr(tmp_path):
    _, module = build(compose_config([*RUN, "sae=jumprelu_paper"], tmp_path))
    assert len(module.optimizer_groups()) == 1


def test_bad_scale_is_refused(tmp_path):
    with pytest.raises(ValueError, match="threshold_lr_scale"):
        build(compose_config([*RUN, "sae.experimental.threshold_lr_scale=0"], tmp_path))


def test_multi_sae_members_keep_their_threshold_groups(tmp_path):
    cfg = compose_config(
        [*RUN, "multi=l0_sweep", "sae.experimental.threshold_lr_scale=0.5", "trainer.max_steps=2"],
        tmp_path,
    )
    datamodule, module = build(cfg)
    trainer = fit_module(datamodule, module, steps=2)
    groups = trainer.optimizers[0].param_groups
    names = [g["name"] for g in groups]
    assert names == ["l0_16", "l0_16/1", "l0_32", "l0_32/1", "l0_64", "l0_64/1"]
    for main, thresholds in zip(groups[::2], groups[1::2]):
        assert thresholds["initial_lr"] == pytest.approx(0.5 * main["initial_lr"])
    assert len(trainer.lr_scheduler_configs[0].scheduler.lr_lambdas) == len(groups)
