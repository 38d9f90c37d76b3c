"""kill -9 during caching, then a rerun: the completed shards are kept and the finished cache is
byte-identical to one built without interruption. Real subprocesses, real SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from saelab.data.cache import MANIFEST

ROOT = Path(__file__).resolve().parents[2]
BUILD = """
import sys
from saelab.data.cache_build import CacheBuilder, LMSource
from saelab.lm.config import ModelConfig
source = LMSource(model=ModelConfig(context_length=64), device="cpu", lm_batch_size=4, progress=False)
builder = CacheBuilder(source, sys.argv[1])
spec = source.spec("train", "resid", 3, 24_000, shard_tokens=2048, shuffle_seed=5)
(cache,) = builder.ensure([spec])
print(cache.folder)
"""


def _run(root: Path) -> subprocess.Popen:
    # One thread in every build, so the numerics of the killed, resumed and reference runs match.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", BUILD, str(root)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def build_here(root: Path) -> Path:
    """The same build in this process (one torch thread, as in the subprocesses): the
    uninterrupted reference the killed builds are compared with."""
    import contextlib
    import io
    from unittest import mock

    with mock.patch.object(sys, "argv", ["-c", str(root)]):
        with contextlib.redirect_stdout(io.StringIO()) as out:
            exec(BUILD, {"__name__": "__reference_build__"})
    return Path(out.getvalue().strip().splitlines()[-1])


def _finish(proc: subprocess.Popen) -> Path:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return Path(out.strip().splitlines()[-1])


@pytest.mark.slow
def test_kill_9_mid_build_then_rerun_gives_the_uninterrupted_cache(tmp_path):
    killed_root, reference_root = tmp_path / "killed", tmp_path / "reference"
    proc = _run(killed_root)
    deadline = time.time() + 240
    sidecars: list[Path] = []
    while time.time() < deadline and proc.poll() is None:
        sidecars = sorted(killed_root.glob("*/shard_00003.json"))
        if sidecars:
            break
        time.sleep(0.02)
    assert sidecars, "the build finished or failed before it could be killed: " + proc.stderr.read()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    folder = sidecars[0].parent
    assert not (folder / MANIFEST).exists()  # a killed build is never mistaken for a complete cache
    kept = {
        p.name: p.stat().st_mtime_ns
        for p in folder.glob("shard_*.npy")
        if (folder / p.name.replace(".npy", ".json")).exists()
    }
    assert len(kept) >= 4

    resumed = _finish(_run(killed_root))
    reference = build_here(reference_root)
    assert resumed == folder and resumed.name == reference.name
    for name, mtime in kept.items():  # completed shards were verified and kept, not recomputed
        assert (resumed / name).stat().st_mtime_ns == mtime
    files = sorted(p.name for p in reference.glob("shard_*"))
    assert files == sorted(p.name for p in resumed.glob("shard_*")) and len(files) == 2 * 12
    for name in files:
        assert (resumed / name).read_bytes() == (reference / name).read_bytes(), name
    a, b = (json.loads((f / MANIFEST).read_text()) for f in (resumed, reference))
    a.pop("build"), b.pop("build")  # timings differ; everything else must not
    assert a == b and a["token_count"] == 24_000
    assert not list(resumed.glob("*.tmp"))
