"""JumpReLU on runs too short for the recipe's per-latent part (docs/maths.md §8.3): the warm-up
then covers the whole run, and its hand-over average forgets the steps taken before the encoder
settled, so a 20-step `trainer=debug` run ends near the L0 it asked for."""

from __future__ import annotations

import pytest

from saelab.runner import train
from saelab.sae.jumprelu import WARMUP_AVERAGE_SPAN, warmup_decay
from saelab.sae.objective import Step
from tests.conftest import TINY_RUN, compose_config

TARGET = 8


@pytest.mark.parametrize("family", ["jumprelu", "matryoshka_jumprelu"])
def test_a_debug_run_ends_near_its_target_l0(tmp_path, family):
    """The real runner on a 20-step trainer=debug run: before, the per-latent half's 10 steps
    took over from thresholds averaged mostly over the first, untrained steps and L0 collapsed."""
    cfg = compose_config(
        [*TINY_RUN, "logger=none", "export=false", f"sae={family}", f"sae.target_l0={TARGET}"],
        tmp_path,
    )
    metrics = train(cfg)
    assert metrics["steps"] == 20
    assert TARGET / 2 <= metrics["val/l0"] <= 2 * TARGET, metrics["val/l0"]
    assert metrics["val/dead_fraction"] <= 0.1


def _objective(tmp_path, *overrides):
    from saelab.runner import build

    cfg = compose_config([*TINY_RUN, "logger=none", "sae=jumprelu", *overrides], tmp_path)
    return build(cfg)[1].objective


def test_the_warm_up_covers_a_run_whose_per_latent_half_could_not_steer_l0(tmp_path):
    # target_l0_lr 1e-2: the controller needs ~100 steps; the last 20% of 450 steps is too short.
    objective = _objective(tmp_path)
    assert objective.warmup_length(Step(index=0, total=450)) == 450
    assert objective.warmup_length(Step(index=0, total=2000)) == 1600  # the recipe's 80%
    fast = _objective(
        tmp_path / "fast", "sae.experimental.target_l0_lr=0.1"
    )  # responds in ~10 steps
    assert fast.warmup_length(Step(index=0, total=450)) == 360
    off = _objective(tmp_path / "off", "sae.threshold_warmup_fraction=0")
    assert off.warmup_length(Step(index=0, total=150)) == 0  # no warm-up stays no warm-up


@pytest.mark.parametrize("warmup_steps", [4, 10, 40, 125, 399])
def test_the_hand_over_average_spans_at_most_a_quarter_of_a_short_warm_up(warmup_steps):
    decay = warmup_decay(0.99, warmup_steps)
    assert 0 <= decay < 0.99
    assert 1 / (1 - decay) <= WARMUP_AVERAGE_SPAN * warmup_steps + 1e-9
    # The first warm-up step's weight in the average at the hand-over: negligible.
    assert decay ** (warmup_steps - 1) < 0.05


def test_long_warm_ups_keep_the_configured_average():
    assert warmup_decay(0.99, 400) == pytest.approx(0.99)
    assert warmup_decay(0.99, 1000) == 0.99
    assert warmup_decay(0.5, 6) == pytest.approx(1 / 3)
