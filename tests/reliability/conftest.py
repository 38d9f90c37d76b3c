"""The reliability suite attacks saelab as an unlucky or hostile user would: kill -9, flipped
bytes, NaN, full disks, crafted run folders. Shared pieces: the small text corpus and the
no-home-cache guard of tests/data, and helpers to damage files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.data.conftest import _no_home_cache, text_corpus  # noqa: F401  (fixtures)
from tests.scale import helpers
from tests.scale.helpers import TINY


def flip_byte(path: Path, offset: int) -> None:
    """Flip every bit of one byte (negative offsets count from the end): same size."""
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def nan_bytes(path: Path, offset: int, count: int = 64) -> None:
    """Overwrite ``count`` bytes at ``offset`` with float32 NaNs: same size, new content."""
    data = bytearray(path.read_bytes())
    nan = np.full(count // 4, np.nan, dtype=np.float32).tobytes()
    data[offset : offset + len(nan)] = nan
    path.write_bytes(bytes(data))


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


# --- training runs in real subprocesses (tests/scale/helpers.py) ---------------------------
STEPS = 300
EVERY = 50
# JumpReLU asked for L0 32 of 64 latents: every step takes the dense path.
DENSE = [
    *TINY,
    "data.batch_size=256",
    f"trainer.max_steps={STEPS}",
    "trainer.val_check_interval=100",
    f"checkpoint_every_n_steps={EVERY}",
]
# JumpReLU asked for L0 8 of 512 latents (1.6% < sparse.SPARSE_MAX_DENSITY): from the first
# steps on, the CPU takes the sparse path (checked by the test that uses it).
SPARSE = [*DENSE, "sae.expansion_factor=32", "sae.target_l0=8"]


def final_state(run: Path) -> dict[str, torch.Tensor]:
    """Weights, buffers and Adam moments of the run's final checkpoint (at STEPS)."""
    return helpers.final_state(run, STEPS)


def step_of(path: Path) -> int:
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])
    except Exception:  # absent, or being replaced right now
        return -1


@pytest.fixture(scope="session")
def dense_reference(tmp_path_factory) -> dict[str, torch.Tensor]:
    """The uninterrupted dense run every interrupted one must end equal to."""
    run = tmp_path_factory.mktemp("dense-reference")
    helpers.train_here(DENSE, run)
    return final_state(run)
