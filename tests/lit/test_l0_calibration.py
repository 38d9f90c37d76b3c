"""`sae.calibrate_l0_at_end`: after the last optimiser step every log-threshold moves by one
common shift so that the last batch's L0 is the target (docs/maths.md §8.11)."""

from __future__ import annotations

import pytest
import torch

from saelab.runner import build
from tests.conftest import TINY_RUN, compose_config, fit_module

# No warm-up, and thresholds Adam can hardly move in 8 steps: L0 ends far from the target, the
# case the calibration is for (a controller whose thresholds lag).
RUN = [
    *TINY_RUN,
    "logger=none",
    "sae=jumprelu",
    "sae.threshold_warmup_fraction=0",
    "sae.threshold_lr_scale=1e-4",
    "sae.target_l0=4",
]
STEPS = 8


def _fit(tmp_path, calibrate: str):
    torch.manual_seed(0)
    datamodule, module = build(
        compose_config([*RUN, f"sae.calibrate_l0_at_end={calibrate}"], tmp_path)
    )
    fit_module(datamodule, module, steps=STEPS)
    module.eval()
    return datamodule, module


def _l0(datamodule, module) -> float:
    with torch.no_grad():
        x = torch.cat([module.normalize(b) for b in datamodule.val_dataloader()])
        return float((module.sae(x).feature_acts > 0).sum(-1).float().mean())


def test_the_last_step_shifts_every_threshold_alike_to_the_target_l0(tmp_path):
    data, plain = _fit(tmp_path / "plain", "null")
    data_c, calibrated = _fit(tmp_path / "calibrated", "true")
    target = calibrated.objective.cfg.target_l0
    assert _l0(data, plain) > 3 * target  # the thresholds alone are nowhere near it
    # Held-out tokens of the same distribution: within a few percent of the target.
    assert _l0(data_c, calibrated) == pytest.approx(target, rel=0.1)
    delta = calibrated.sae.log_threshold.detach() - plain.sae.log_threshold.detach()
    shift = float(calibrated.objective.l0_calibration_shift)
    assert shift > 0  # L0 was too high: thresholds go up
    # Every step before the last was the plain run's: the two differ by the one shift only.
    torch.testing.assert_close(delta, torch.full_like(delta, shift), rtol=1e-4, atol=1e-5)


def test_calibration_needs_a_target(tmp_path):
    overrides = [*RUN, "sae.calibrate_l0_at_end=true", "sae.target_l0=null"]
    overrides += ["sae.preact_coefficient=0"]
    with pytest.raises(ValueError, match="calibrate_l0_at_end=true sets the final thresholds"):
        build(compose_config(overrides, tmp_path))
