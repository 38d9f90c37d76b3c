"""The warning a run gives before it reads a finite source's training rows many times over
(``saelab.lit.repetition``): real files on disk, a real Trainer, and the runner's own run."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from saelab.lit.repetition import MAX_PASSES, RepeatedDataWarning
from saelab.runner import build, train
from tests.conftest import compose_config, fit_module

ROWS, VAL, BATCH = 1024, 128, 128  # 7 training batches a pass


def overrides(path) -> list[str]:
    return [
        "data=files",
        f"data.path={path}",
        f"data.batch_size={BATCH}",
        "data.block_size=64",
        f"data.val_tokens={VAL}",
        "sae=topk",
        "sae.k=4",
        "sae.expansion_factor=4",
        "sae.normalization_tokens=512",
        "logger=none",
    ]


@pytest.fixture
def acts(tmp_path):
    path = tmp_path / "acts.npy"
    np.save(path, np.random.default_rng(0).normal(size=(ROWS, 8)).astype(np.float32))
    return path


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "saelab.lit.repetition"]


@pytest.mark.parametrize(("steps", "passes"), [(28, 4.0), (36, 36 / 7)])
def test_the_warning_counts_the_passes_and_is_given_only_beyond_the_limit(
    tmp_path, acts, caplog, steps, passes
):
    datamodule, module = build(compose_config(overrides(acts), tmp_path / "run"))
    callback = RepeatedDataWarning()
    with caplog.at_level(logging.WARNING, logger="saelab.lit.repetition"):
        fit_module(datamodule, module, steps=steps, callbacks=[callback])
    assert callback.passes == pytest.approx(passes)
    messages = warnings_of(caplog)
    if passes <= MAX_PASSES:
        assert messages == []
    else:
        (message,) = messages
        assert f"its {(ROWS - VAL) // BATCH * BATCH:,} training rows {passes:.1f} times" in message
        assert "Raise data.train_tokens" in message and "lower trainer.max_steps" in message


def test_the_runner_warns_on_a_run_that_revisits_its_rows(tmp_path, acts, caplog):
    cfg = compose_config(
        [*overrides(acts), "trainer=debug", "trainer.max_steps=40", "eval_tokens=0"],
        tmp_path / "run",
    )
    with caplog.at_level(logging.WARNING, logger="saelab.lit.repetition"):
        train(cfg)
    (message,) = warnings_of(caplog)
    assert "5.7 times" in message
