"""data=files resumes exactly: kill -9 a train.py run on a folder of activation shards, rerun
the same run (in the test's process), and end with the weights and Adam state of a run never
interrupted (bitwise; one torch thread everywhere). The run spans several epochs, so the per-epoch reshuffle is resumed too."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.scale.helpers import (
    checkpoint,
    kill_when,
    rerun_here,
    saved_step,
    start_train_py,
    train_here,
)

STEPS = 240


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("acts")
    rng = np.random.default_rng(0)
    mix = rng.standard_normal((16, 16))
    for i in range(3):  # 3 x 2,000 rows: 44 batches of 128 per epoch after the held-out rows
        np.save(folder / f"part{i}.npy", (rng.standard_normal((2000, 16)) @ mix).astype("float32"))
    return folder


def args(shards, run, every: int) -> list[str]:
    return [
        "data=files",
        f"data.path={shards}",
        "data.batch_size=128",
        "data.block_size=32",
        "data.val_tokens=256",
        "sae=topk",
        "sae.k=4",
        "sae.expansion_factor=4",
        "sae.normalization_tokens=1024",
        "logger=none",
        f"trainer.max_steps={STEPS}",
        "trainer.val_check_interval=80",
        "trainer.limit_val_batches=2",
        "trainer.enable_progress_bar=false",
        f"checkpoint_every_n_steps={every}",
        f"hydra.run.dir={run}",
    ]


def state(run) -> dict[str, torch.Tensor]:
    ckpt = checkpoint(run)
    assert ckpt["global_step"] == STEPS
    adam = ckpt["optimizer_states"][0]["state"]
    return {
        **ckpt["state_dict"],
        **{f"adam.{i}.{k}": v for i, s in adam.items() for k, v in s.items()},
    }


@pytest.mark.slow
def test_kill_9_then_rerun_on_activation_files_ends_with_identical_weights(tmp_path, shards):
    train_here(args(shards, tmp_path / "whole", STEPS), tmp_path / "whole")
    run = tmp_path / "killed"
    kill_when(start_train_py(args(shards, run, 20)), lambda: saved_step(run) > 0)
    assert 0 < checkpoint(run)["global_step"] < STEPS
    assert "resuming from" in rerun_here(args(shards, run, 20), run)
    whole, resumed = state(tmp_path / "whole"), state(run)
    assert whole.keys() == resumed.keys()
    for key, value in whole.items():
        assert torch.equal(value, resumed[key]), key
