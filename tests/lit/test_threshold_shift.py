"""`sae.threshold_shift_gain`: after the warm-up, the L0 controller also shifts every
log-threshold by gain x e after each optimiser step (docs/maths.md §8.11), so L0 holds even when
the thresholds barely learn."""

from __future__ import annotations

import pytest
import torch

from saelab.runner import build
from tests.conftest import TINY_RUN, compose_config, fit_module

# No warm-up (its thresholds are set from each batch), and thresholds Adam can hardly move: the
# situation the shift is for (a small threshold_lr_scale, an lr decayed towards 0).
RUN = [
    *TINY_RUN,
    "logger=none",
    "sae=jumprelu",
    "sae.threshold_warmup_fraction=0",
    "sae.threshold_lr_scale=1e-4",
    "sae.target_l0=4",
]


def _fit(tmp_path, gain, steps: int):
    torch.manual_seed(0)
    datamodule, module = build(compose_config([*RUN, f"sae.threshold_shift_gain={gain}"], tmp_path))
    before = module.sae.log_threshold.detach().clone()
    fit_module(datamodule, module, steps=steps)
    return datamodule, module, before


def _l0(datamodule, module) -> float:
    module.eval()
    with torch.no_grad():
        x = module.normalize(next(iter(datamodule.val_dataloader())))
        return float((module.sae(x).feature_acts > 0).sum(-1).float().mean())


def test_one_step_shifts_every_threshold_by_gain_times_the_l0_error(tmp_path):
    _, plain, before = _fit(tmp_path / "plain", "null", steps=1)
    _, shifted, before_s = _fit(tmp_path / "shifted", 0.5, steps=1)
    torch.testing.assert_close(before, before_s)  # the same start, the same first forward
    cfg = shifted.objective.cfg
    # The controller's first lambda is lambda_0 + kp * e: the error of the one batch.
    error = float(shifted.objective.l0_multiplier - cfg.l0_coefficient) / cfg.target_l0_kp
    assert error > 1  # theta_0 = 1e-3 fires on about half the latents, far above 4
    delta = shifted.sae.log_threshold.detach() - plain.sae.log_threshold.detach()
    torch.testing.assert_close(delta, torch.full_like(delta, 0.5 * error), rtol=1e-4, atol=1e-5)


def test_the_shift_brings_l0_to_the_target_where_the_thresholds_alone_do_not(tmp_path):
    data, plain, _ = _fit(tmp_path / "plain", "null", steps=40)
    data_s, shifted, _ = _fit(tmp_path / "shifted", 0.2, steps=40)
    target = shifted.objective.cfg.target_l0
    assert _l0(data, plain) > 3 * target  # Adam at lr x 1e-4 cannot move the thresholds there
    assert _l0(data_s, shifted) == pytest.approx(target, rel=0.3)


def test_the_shift_needs_the_dual_target(tmp_path):
    overrides = [*RUN, "sae.threshold_shift_gain=0.1", "sae.target_l0_method=quadratic"]
    with pytest.raises(ValueError, match="threshold_shift_gain=0.1 steers L0"):
        build(compose_config(overrides, tmp_path))
