"""Running train.py as users do (real subprocesses, real Hydra folders) and reading what it wrote."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from saelab.lit.checkpointing import checkpoint_step, find_checkpoint
from saelab.sae import load_sae

ROOT = Path(__file__).resolve().parents[2]

# A tiny synthetic problem whose blocks (64 tokens) divide every batch size used, so runs with
# different batch sizes or numbers of ranks read the same token stream (data.block_tokens).
TINY = [
    "data=synthetic",
    "data.d_in=16",
    "data.n_features=64",
    "data.mean_l0=3",
    "data.block_tokens=64",
    "data.val_tokens=1024",
    "sae.expansion_factor=4",
    "sae.normalization_tokens=2048",
    "logger=none",
    "sae.lr=1e-3",
    # trainer=debug's settings, spelled out so that trainer=ddp / trainer=fsdp can be added
    "trainer.max_steps=20",
    "trainer.val_check_interval=10",
    "trainer.limit_val_batches=2",
    "trainer.enable_progress_bar=false",
]


def env() -> dict[str, str]:
    # One thread per process: the machine is small, and identical thread counts keep the float
    # reductions of compared runs identical.
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}


def train_py(
    args: list[str], timeout: float = 400, check: bool = True
) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "train.py", *args],
        cwd=ROOT,
        env=env(),
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


def train_here(args: list[str], run: Path) -> None:
    """The run ``python train.py *args hydra.run.dir=run`` makes, trained in this process: for
    the uninterrupted references that killed, resumed or multi-rank subprocess runs are compared
    with (their own interpreter would only repeat the imports). One torch thread, as the
    subprocesses' OMP_NUM_THREADS=1, so the arithmetic is the same (also under ``-n 0``)."""
    from saelab.runner import train
    from tests.conftest import compose_config

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(compose_config([a for a in args if not a.startswith("hydra.run.dir=")], run))
    finally:
        torch.set_num_threads(threads)


def rerun_here(args: list[str], run: Path) -> str:
    """``python train.py *args`` run again in ``run``, in this process: the rerun that finishes
    an attacked run (it resumes from the folder's checkpoint through the same runner code).
    The attacks themselves (kill -9, SIGTERM, a full disk) stay real subprocesses, and one test
    (tests/scale/test_resume.py) keeps the rerun a real command too. Returns what the rerun
    logged ("resuming from ...", a fallback's warning)."""
    records: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: records.append(record.getMessage())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        train_here(args, run)
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    return "\n".join(records)


def start_train_py(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "train.py", *args],
        cwd=ROOT,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def exported(folder: Path) -> dict[str, torch.Tensor]:
    sae = load_sae(folder)
    return {k: v.detach() for k, v in sae.state_dict().items()}


def kill_when(proc: subprocess.Popen, ready, timeout: float = 300) -> None:
    """SIGKILL ``proc`` as soon as ``ready()`` is true; fails if it ended first."""
    deadline = time.time() + timeout
    while proc.poll() is None and time.time() < deadline and not ready():
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it was killed:\n" + err[-3000:]


def saved_step(run: Path) -> int:
    """The step a rerun in ``run`` would resume from (``find_checkpoint``: last.ckpt, else
    previous.ckpt); -1 while there is none. Safe to poll while the run writes: a commit renames
    last.ckpt away before it renames the new one in, so a read can lose the file mid-way; that
    read counts as none yet."""
    try:
        path = find_checkpoint(run)
        return -1 if path is None else int(checkpoint_step(path))
    except (OSError, RuntimeError):
        return -1


def checkpoint(run: Path) -> dict:
    """The checkpoint a rerun in ``run`` would resume from (last.ckpt, or previous.ckpt if the
    run was killed between a commit's two renames). Read it only once the run has stopped."""
    path = find_checkpoint(run)
    assert path is not None, f"no checkpoint in {run}"
    return torch.load(path, map_location="cpu", weights_only=True)


def final_state(run: Path, steps: int) -> dict[str, torch.Tensor]:
    """Weights, buffers and Adam moments of the run's last checkpoint, which must be at step
    ``steps``."""
    ckpt = checkpoint(run)
    assert ckpt["global_step"] == steps
    return {
        **ckpt["state_dict"],
        **{
            f"adam.{i}.{k}": v
            for i, s in ckpt["optimizer_states"][0]["state"].items()
            for k, v in s.items()
        },
    }


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    """Bitwise equal, naming every tensor that differs and by how much."""
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, "differ bitwise: " + ", ".join(
        f"{k} (max |diff| {(a[k].float() - b[k].float()).abs().max():.3g})" for k in differ
    )
