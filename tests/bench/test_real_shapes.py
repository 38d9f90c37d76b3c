"""bench/real_shapes.py and bench/gpu_smoke.sh run what they claim: every phase end to end (at a
toy Gemma 2 shape, on the CPU, with the smoke script's own arguments, fewer tokens and steps), a table with
every row; and the smoke script stops at once, saying why, where there is no GPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def _smoke(args: list[str], **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "bench/gpu_smoke.sh", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.mark.slow  # a subprocess or a multi-site cache: seconds
@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_gpu_smoke_without_a_gpu_stops_at_once_saying_why():
    result = _smoke([])
    assert result.returncode == 2
    assert "needs a CUDA GPU: torch.cuda.is_available() is False" in result.stderr
    assert "python bench/real_shapes.py" in result.stderr  # what to run instead
    assert not result.stdout.strip()


@pytest.mark.slow
def test_the_smoke_steps_run_end_to_end_at_a_toy_shape_on_the_cpu(tmp_path):
    table = tmp_path / "table.txt"
    result = _smoke(
        [
            *("--shape", "toy", "--layer", "2", "--context", "128"),
            *("--widths", "1024", "--stream-widths", "1024", "--steps", "3"),
            *("--train-tokens", "32768"),  # a quarter of the GPU's budget: the same phases
            *("--folder", str(tmp_path / "model"), "--root", str(tmp_path / "scratch")),
            *("--out", str(table)),
        ],
        SAELAB_SMOKE_ON_CPU="1",
        OMP_NUM_THREADS="1",
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    text = table.read_text()
    assert text.strip() in result.stdout
    for row in (
        "| bare forward to layer 2 (32,768 tokens",
        "| caching pass resid@2",
        "| JumpReLU 1,024 latents on data=stream, batch 4096, 3 steps |",
        "| JumpReLU 1,024 latents on data=activations, batch 4096, 3 steps |",
        "| total, data=stream (LM + SAE on one device) |",
    ):
        assert row in text, row
    # The toy model was written once, like the real one, as a plain Hugging Face folder.
    assert (tmp_path / "model" / "config.json").is_file()
