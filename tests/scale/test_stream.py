"""data=stream through train.py as users run it. It resumes exactly: kill -9 a real train.py in the middle, rerun the same run (in the test's process), and
end with the same weights, bit for bit, as a run that was never interrupted. The resumed run
rebuilds its shuffle buffer from the checkpointed position (counting tokens, recomputing one
window), so the LM's activations, their order and everything trained on them are the same.

The SAE runs in its dense regime (L0 128 of 512 latents): this test is about the data; whether
the SAE's own sparse-path choice survives a resume is tested with the SAE.
"""

from __future__ import annotations

import json

import pytest
import torch

from .helpers import (
    checkpoint,
    kill_when,
    rerun_here,
    saved_step,
    start_train_py,
    train_here,
    train_py,
)

STEPS = 60
STREAM = [
    "data=stream",
    "layer=1",
    "data.context_length=64",
    "data.val_tokens=512",
    "data.batch_size=128",
    "data.buffer_tokens=1024",  # 8 batches per window: kills land mid-window
    "data.lm_batch_size=4",
    "data.device=cpu",
    "data.progress=false",
    "sae.expansion_factor=4",
    "sae.target_l0=128",
    "sae.normalization_tokens=1024",
    "logger=none",
    "eval_tokens=0",
    f"trainer.max_steps={STEPS}",
    "trainer.val_check_interval=30",
    "trainer.limit_val_batches=2",
    "trainer.enable_progress_bar=false",
]


def _state(run) -> dict[str, torch.Tensor]:
    ckpt = checkpoint(run)
    assert ckpt["global_step"] == STEPS
    adam = {
        f"adam.{i}.{k}": v
        for i, s in ckpt["optimizer_states"][0]["state"].items()
        for k, v in s.items()
    }
    return {**ckpt["state_dict"], **adam}


@pytest.mark.slow
def test_stream_kill_9_then_rerun_ends_with_identical_weights(tmp_path):
    reference = tmp_path / "uninterrupted"
    train_here([*STREAM, f"checkpoint_every_n_steps={STEPS}"], reference)

    run = tmp_path / "killed"
    args = [*STREAM, "checkpoint_every_n_steps=5", f"hydra.run.dir={run}"]
    kill_when(start_train_py(args), lambda: saved_step(run) >= 15)
    killed_at = saved_step(run)
    assert 0 < killed_at < STEPS
    assert "resuming from" in rerun_here(args, run)
    expected, got = _state(reference), _state(run)
    assert expected.keys() == got.keys()
    for key, value in expected.items():
        assert torch.equal(value, got[key]), f"{key} differs after resuming at {killed_at}"


@pytest.mark.slow
def test_stream_under_ddp_two_ranks_train_and_resume_position_is_per_rank_count(tmp_path):
    run = tmp_path / "ddp"
    args = [
        *[a for a in STREAM if not a.startswith("trainer.max_steps")],
        "trainer.max_steps=12",
        "trainer=ddp",
        "trainer.devices=2",
        "checkpoint_every_n_steps=6",
        f"hydra.run.dir={run}",
    ]
    train_py(args)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 12 and 0 < metrics["val/fvu"] < 2
    # The position counts global batches (2 ranks x 12 steps), saved with the rank count.
    position = checkpoint(run)["StreamDataModule"]
    assert (position["offset"], position["world_size"]) == (24, 2)
