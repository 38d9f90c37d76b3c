"""Attacks on checkpoints: flipped bytes, same-size NaN bytes and truncation of ``last.ckpt``
(file and sharded-folder layouts), both checkpoints damaged, a full disk while writing one.
A damaged checkpoint is never loaded: the run falls back to the previous good one with a
warning naming the file (and still ends bit for bit as if never interrupted), or, with no good
one left, refuses naming every file and the fix."""

from __future__ import annotations

import logging
import resource
import subprocess
import sys

import pytest
import torch

from saelab.lit.checkpoint_files import (
    DIGESTS,
    CheckpointError,
    commit,
    digest_of,
    find_verified,
)
from saelab.lit.checkpointing import AtomicCheckpointIO, find_checkpoint
from tests.scale.helpers import ROOT, assert_same, env, kill_when, rerun_here, start_train_py

from .conftest import (
    DENSE,
    EVERY,
    final_state,
    flip_byte,
    nan_bytes,
    step_of,
    truncate,
)

DAMAGE = {
    "flipped-byte": lambda p: flip_byte(p, -200),
    "nan-bytes": lambda p: nan_bytes(p, p.stat().st_size // 2, 64),
    "truncated": truncate,
}


def _two_checkpoints(folder):
    io = AtomicCheckpointIO()
    path = folder / "checkpoints" / "last.ckpt"
    for step in (1, 2):
        io.save_checkpoint(
            {"state_dict": {"w": torch.full((256,), float(step))}, "global_step": step}, path
        )
    return io, path


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_last_checkpoint_falls_back_to_the_previous_with_a_warning(
    tmp_path, caplog, damage
):
    io, path = _two_checkpoints(tmp_path)
    DAMAGE[damage](path)
    with pytest.raises(CheckpointError, match=rf"{path}"):
        io.load_checkpoint(path)  # never loaded, whatever the damage
    with caplog.at_level(logging.WARNING):
        found = find_checkpoint(tmp_path)
    assert found == path.with_name("previous.ckpt")
    assert f"{path} is corrupt" in caplog.text and "resuming from" in caplog.text
    assert io.load_checkpoint(found)["global_step"] == 1
    # The next save sets the damaged file aside: it never becomes the "previous" one.
    io.save_checkpoint({"state_dict": {"w": torch.zeros(256)}, "global_step": 3}, path)
    assert io.load_checkpoint(path.with_name("previous.ckpt"))["global_step"] == 1
    assert path.with_name("last.ckpt.corrupt").is_file()


def test_both_checkpoints_damaged_is_refused_naming_both_and_the_fix(tmp_path):
    _, path = _two_checkpoints(tmp_path)
    flip_byte(path, -200)
    truncate(path.with_name("previous.ckpt"))
    with pytest.raises(CheckpointError) as e:
        find_checkpoint(tmp_path)
    message = str(e.value)
    assert str(path) in message and str(path.with_name("previous.ckpt")) in message
    assert "new folder" in message and "delete" in message


def test_a_checkpoint_with_nan_weights_is_never_written(tmp_path):
    io, path = _two_checkpoints(tmp_path)
    before = path.read_bytes()
    bad = {"state_dict": {"w": torch.tensor([1.0, float("nan")])}, "global_step": 3}
    with pytest.raises(FloatingPointError, match=r"refusing to write .*last\.ckpt: w hold NaN"):
        io.save_checkpoint(bad, path)
    assert path.read_bytes() == before and not path.with_name("last.ckpt.tmp").exists()


def test_sharded_folder_checkpoints_are_checksummed_and_rotated_too(tmp_path):
    """The trainer=fsdp layout (a folder: meta.pt + shard files), committed as the strategy
    does; a changed shard file sends resume to the previous folder."""
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    path = folder / "last.ckpt"
    for step in (1, 2):
        tmp = folder / "last.ckpt.tmp"
        tmp.mkdir()
        torch.save({"global_step": step}, tmp / "meta.pt")
        (tmp / "__0_0.distcp").write_bytes(bytes([step]) * 4096)
        commit(tmp, path, digest_of(tmp), step)
    assert (folder / "previous.ckpt" / "meta.pt").is_file() and (folder / DIGESTS).is_file()
    assert find_verified(path) == path
    flip_byte(path / "__0_0.distcp", 100)
    assert find_verified(path) == folder / "previous.ckpt"


# --- end to end: train.py, kill -9, damage, the same run again (rerun_here) ------------------
def kill_with_two_checkpoints(args: list[str], last) -> None:
    """train.py killed once a previous.ckpt exists to fall back on and a last.ckpt to damage
    (a kill between a commit's two renames leaves none: the same command again moves past it)."""
    for _ in range(3):
        kill_when(start_train_py(args), lambda: step_of(last.with_name("previous.ckpt")) > 0)
        if last.exists():
            return
    raise AssertionError("three kills all landed between a commit's two renames")


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["nan-bytes", "truncated"])
def test_resume_after_damage_to_last_ckpt_takes_the_previous_and_ends_bit_for_bit(
    tmp_path, dense_reference, damage
):
    run = tmp_path / "run"
    args = [*DENSE, f"hydra.run.dir={run}"]
    last = run / "checkpoints" / "last.ckpt"
    kill_with_two_checkpoints(args, last)
    DAMAGE[damage](last)
    log = rerun_here(args, run)
    assert f"{last} is corrupt" in log and "resuming from" in log
    assert_same(final_state(run), dense_reference)


@pytest.mark.slow
def test_a_full_disk_while_checkpointing_fails_naming_the_file_and_keeps_the_good_one(
    tmp_path, dense_reference
):
    run = tmp_path / "run"
    args = [*DENSE, f"hydra.run.dir={run}"]
    last = run / "checkpoints" / "last.ckpt"
    kill_when(start_train_py(args), lambda: step_of(last) >= EVERY)
    good, size = step_of(last), last.stat().st_size
    limit = size // 2  # the next checkpoint cannot be written; logs and configs can

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    done = subprocess.run(
        [sys.executable, "train.py", *args],
        cwd=ROOT,
        env=env(),
        capture_output=True,
        text=True,
        timeout=400,
        preexec_fn=limited,
    )
    assert done.returncode != 0
    assert f"could not write {last}: File too large" in done.stderr, done.stderr[-3000:]
    assert step_of(last) == good and find_checkpoint(run) == last  # the good one, verified
    assert not last.with_name("last.ckpt.tmp").exists()
    assert not (run / "sae").exists() and not (run / "metrics.json").exists()
    rerun_here(args, run)  # space again: the same command finishes the run exactly
    assert_same(final_state(run), dense_reference)


# --- the digest registry itself damaged ------------------------------------------------------
REGISTRY_DAMAGE = {
    "truncated": lambda p: p.write_text('{"checkpoints": ['),
    "not-a-list": lambda p: p.write_text('{"checkpoints": {"blake2b": "00"}}'),
    "entry-without-digest": lambda p: p.write_text('{"checkpoints": [{"global_step": 2}]}'),
    "binary": lambda p: p.write_bytes(b"\xff\xfe\x00garbage"),
}


@pytest.mark.parametrize("damage", REGISTRY_DAMAGE)
def test_a_damaged_digest_registry_is_refused_and_never_loads_unverified(tmp_path, caplog, damage):
    io, path = _two_checkpoints(tmp_path)
    registry = path.with_name(DIGESTS)
    previous = path.with_name("previous.ckpt")
    flip_byte(path, -200)  # tampered: only the registry could tell
    REGISTRY_DAMAGE[damage](registry)
    before = {p.name: p.read_bytes() for p in path.parent.iterdir()}
    with pytest.raises(CheckpointError, match=rf"{registry}") as e:
        find_checkpoint(tmp_path)
    assert "new folder" in str(e.value) and "backup" in str(e.value)
    with pytest.raises(CheckpointError, match=rf"{registry}"):
        io.load_checkpoint(path)
    with pytest.raises(CheckpointError, match=rf"{registry}"):
        io.load_checkpoint(previous)
    assert "unverified" not in caplog.text
    # Saving over it is refused too: the good previous.ckpt is never rotated away.
    with pytest.raises(CheckpointError, match=rf"{registry}"):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(256)}, "global_step": 3}, path)
    assert {p.name: p.read_bytes() for p in path.parent.iterdir()} == before


@pytest.mark.slow
def test_train_py_refuses_a_truncated_registry_and_keeps_both_checkpoints(tmp_path):
    run = tmp_path / "run"
    args = [*DENSE, f"hydra.run.dir={run}"]
    last = run / "checkpoints" / "last.ckpt"
    kill_with_two_checkpoints(args, last)
    nan_bytes(last, last.stat().st_size // 2, 64)
    last.with_name(DIGESTS).write_text('{"checkpoints": [')
    before = {p.name: p.read_bytes() for p in last.parent.iterdir()}
    done = subprocess.run(
        [sys.executable, "train.py", *args],
        cwd=ROOT,
        env=env(),
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert done.returncode != 0
    assert f"{last.with_name(DIGESTS)}: it is unreadable" in done.stderr, done.stderr[-3000:]
    assert "unverified" not in done.stdout + done.stderr
    assert {p.name: p.read_bytes() for p in last.parent.iterdir()} == before
    assert not (run / "sae").exists() and not (run / "metrics.json").exists()
