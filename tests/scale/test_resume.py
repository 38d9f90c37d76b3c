"""Exact resume: kill -9 in the middle of a run, rerun, and end with the same weights as a run
that was never interrupted; SIGTERM checkpoints at a step boundary and stops; a resume with a
different config or from a folder without a checkpoint is refused, naming the problem.

The comparisons are BITWISE (torch.equal): on one machine with one thread per process every
operation is deterministic, the checkpoint holds the exact fp32 weights, Adam moments, LR
scheduler, step counters, dead-latent counters and data position, and the data are a pure
function of the position; nothing is recomputed differently after a restart.
"""

from __future__ import annotations

import json
import signal
import time

import pytest
import torch

from saelab.lit.checkpoint_files import CheckpointError
from saelab.lit.checkpointing import (
    AtomicCheckpointIO,
    capture_rng,
    config_differences,
    restore_rng,
)
from saelab.runner import train
from tests.conftest import TINY_RUN, compose_config

from .helpers import (
    TINY,
    assert_same,
    checkpoint,
    final_state,
    kill_when,
    rerun_here,
    saved_step,
    start_train_py,
    train_here,
    train_py,
)

STEPS = 600
LONG = [
    *TINY,
    "data.batch_size=256",
    f"trainer.max_steps={STEPS}",
    "trainer.val_check_interval=200",
]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run = tmp_path_factory.mktemp("uninterrupted")
    train_here([*LONG, "checkpoint_every_n_steps=100"], run)
    return final_state(run, STEPS)


@pytest.mark.slow
def test_kill_9_mid_run_then_rerun_in_the_same_folder_ends_with_identical_weights(
    tmp_path, uninterrupted
):
    # The sparse regime, killed twice: tests/reliability/test_kill_resume.py.
    run = tmp_path / "run"
    args = [*LONG, "checkpoint_every_n_steps=50", f"hydra.run.dir={run}"]
    kill_when(start_train_py(args), lambda: saved_step(run) > 0)
    killed_at = checkpoint(run)["global_step"]  # complete and loadable, even if killed mid-write
    assert 0 < killed_at < STEPS

    rerun = train_py(args)  # the same command: the folder has a checkpoint, so it resumes
    assert "resuming from" in rerun.stderr + rerun.stdout
    assert_same(final_state(run, STEPS), uninterrupted)


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_stops_and_resume_continues_exactly(tmp_path, uninterrupted):
    run = tmp_path / "run"
    # No interval checkpoint before the end: any checkpoint found must come from the signal.
    # Off a terminal the progress is plain lines, the first a tenth of the way into the run.
    progress = "trainer.enable_progress_bar=true"
    args = [*LONG, progress, f"checkpoint_every_n_steps={STEPS}", f"hydra.run.dir={run}"]
    proc = start_train_py(args)
    for line in proc.stdout:
        if line.startswith("training steps "):
            break
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    stopped_at = checkpoint(run)["global_step"]
    assert 0 < stopped_at < STEPS, "SIGTERM must checkpoint mid-run"
    assert (
        f"SIGTERM received: saved {run / 'checkpoints' / 'last.ckpt'} at step {stopped_at}"
        in out + err
    )
    assert (
        not (run / "sae").exists() and not (run / "metrics.json").exists()
    )  # no export of a partial run

    assert "resuming from" in rerun_here([*args, f"resume={run}"], run)
    assert_same(final_state(run, STEPS), uninterrupted)


@pytest.mark.slow
def test_sigterm_to_rank_0_of_a_ddp_run_stops_both_ranks_at_one_step_with_a_checkpoint(tmp_path):
    run = tmp_path / "run"
    args = [
        *TINY,
        "data.batch_size=128",
        "trainer=ddp",
        "trainer.devices=2",
        f"hydra.run.dir={run}",
        "trainer.val_check_interval=1000",
        "checkpoint_every_n_steps=5000",
        "trainer.enable_progress_bar=true",
    ]
    proc = start_train_py([*args, "trainer.max_steps=1000"])
    for line in proc.stdout:  # rank 0's first plain progress line, a tenth into the run
        if line.startswith("training steps "):
            break
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)  # rank 0 only: rank 1 learns it through the all-reduce
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    stopped_at = checkpoint(run)["global_step"]
    assert 0 < stopped_at < 1000 and f"at step {stopped_at}" in out + err
    train_py([*args, f"trainer.max_steps={stopped_at + 5}", f"resume={run}"])  # both ranks go on
    assert json.loads((run / "metrics.json").read_text())["steps"] == stopped_at + 5


# --- refusals and building blocks (fast) -----------------------------------------------------
def test_resume_from_a_folder_without_a_checkpoint_is_refused(tmp_path):
    cfg = compose_config([*TINY_RUN, "logger=none", f"resume={tmp_path}"], tmp_path)
    with pytest.raises(FileNotFoundError, match=r"resume=.*there is no checkpoint at .*last\.ckpt"):
        train(cfg)


def test_resume_with_a_different_config_is_refused_naming_the_keys(tmp_path):
    train(
        compose_config([*TINY_RUN, "logger=none", "trainer.max_steps=4", "export=false"], tmp_path)
    )
    cfg = compose_config(
        [*TINY_RUN, "logger=none", "sae.lr=0.5", "data.mean_l0=2", f"resume={tmp_path}"], tmp_path
    )
    with pytest.raises(
        ValueError,
        match=r"data\.mean_l0: checkpoint has 3.*sae\.lr: checkpoint has None, this run has 0\.5",
    ):
        train(cfg)


def test_resume_into_another_folder_is_refused(tmp_path):
    cfg = compose_config([*TINY_RUN, "logger=none", f"resume={tmp_path / 'a'}"], tmp_path / "b")
    with pytest.raises(ValueError, match="continues a run in its own folder"):
        train(cfg)


def test_a_rerun_in_a_finished_folder_resumes_and_extends_it(tmp_path):
    train(compose_config([*TINY_RUN, "logger=none", "trainer.max_steps=4"], tmp_path))
    metrics = train(compose_config([*TINY_RUN, "logger=none", "trainer.max_steps=6"], tmp_path))
    assert metrics["steps"] == 6 and checkpoint(tmp_path)["global_step"] == 6


def test_allowed_and_refused_config_changes():
    saved = {
        "sae": {"lr": 1e-3, "k": 4},
        "trainer": {"max_steps": 10, "devices": 1},
        "output_dir": "/a",
    }
    now = {
        "sae": {"lr": 1e-3, "k": 8},
        "trainer": {"max_steps": 20, "devices": 2},
        "output_dir": "/b",
    }
    assert config_differences(saved, now) == ["sae.k: checkpoint has 4, this run has 8"]


def test_checkpoints_are_written_atomically_and_loaded_weights_only(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "step": 1}, path)
    io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "step": 2}, path)
    # No temp file left; the one before kept as previous.ckpt; their digests on record.
    names = sorted(p.name for p in path.parent.iterdir())
    assert names == ["digests.json", "last.ckpt", "previous.ckpt"]
    assert io.load_checkpoint(path)["step"] == 2
    assert io.load_checkpoint(path.with_name("previous.ckpt"))["step"] == 1
    torch.save({"evil": compose_config}, path)  # not the bytes that were written: refused
    with pytest.raises(CheckpointError, match="checksum"):
        io.load_checkpoint(path)
    (path.parent / "digests.json").unlink()  # unverifiable; still, only tensors and containers
    with pytest.raises(Exception, match="[Ww]eights only"):
        io.load_checkpoint(path)


def test_rng_states_round_trip_in_weights_only_types(tmp_path):
    import random

    import numpy as np

    torch.manual_seed(3)
    state = capture_rng()
    torch.save(state, tmp_path / "rng.pt")
    expected = (torch.rand(2), np.random.rand(2), random.random())
    torch.manual_seed(99), np.random.seed(99), random.seed(99)
    restore_rng(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert torch.equal(torch.rand(2), expected[0])
    assert (np.random.rand(2) == expected[1]).all() and random.random() == expected[2]
