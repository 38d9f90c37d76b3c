"""`sae.threshold_warmup_ema`: the warm-up stores a moving average of its batches' thresholds
(in log theta) instead of the last batch's (docs/maths.md §8.3)."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch

from saelab.runner import build
from tests.conftest import TINY_RUN, compose_config, fit_module

# The whole run under the warm-up; no pre-activation loss, the one term of the warm-up whose
# gradient reads theta, so both runs below train the same encoder and decoder.
RUN = [
    *TINY_RUN,
    "logger=none",
    "sae=jumprelu",
    "sae.threshold_warmup_fraction=1",
    "sae.preact_coefficient=0",
    "sae.target_l0=4",
]
STEPS = 6


class Thresholds(pl.Callback):
    def __init__(self) -> None:
        self.seen: list[torch.Tensor] = []

    def on_train_batch_end(self, trainer, module, *args) -> None:
        self.seen.append(module.sae.log_threshold.detach().clone())


def _fit(tmp_path, ema: str) -> tuple[list[torch.Tensor], object]:
    torch.manual_seed(0)
    datamodule, module = build(
        compose_config([*RUN, f"sae.experimental.threshold_warmup_ema={ema}"], tmp_path)
    )
    record = Thresholds()
    fit_module(datamodule, module, steps=STEPS, callbacks=[record])
    return record.seen, module


def test_the_stored_thresholds_are_the_average_of_the_batches(tmp_path):
    batches, plain = _fit(tmp_path / "plain", "null")  # each step: that batch's thresholds
    # 0.25: under the cap a 6-step warm-up puts on the average's span (1/3; test_jumprelu_short_runs.py)
    averaged, smoothed = _fit(tmp_path / "ema", "0.25")
    torch.testing.assert_close(smoothed.sae.W_dec, plain.sae.W_dec)  # the same training
    assert len(batches) == STEPS
    expected = batches[0]
    for step in range(STEPS):
        if step:
            expected = 0.25 * expected + 0.75 * batches[step]
        torch.testing.assert_close(averaged[step], expected, rtol=1e-5, atol=1e-6)
    assert int(smoothed.objective.warmup_steps) == STEPS
    # The batches' thresholds do move from step to step, so the average is not one of them.
    assert not torch.allclose(averaged[-1], batches[-1])


def test_a_decay_of_one_is_refused(tmp_path):
    with pytest.raises(ValueError, match="threshold_warmup_ema"):
        build(compose_config([*RUN, "sae.experimental.threshold_warmup_ema=1"], tmp_path))
