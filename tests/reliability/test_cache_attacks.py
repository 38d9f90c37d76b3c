"""Attacks on the activation cache after (and during) its build: flipped bytes, NaN bytes beyond
the normalisation sample, a damaged shard record, kill -9 at more points of the build, a full
disk. Nothing wrong is ever trained on, and every error names the file and the fix."""

from __future__ import annotations

import json
import logging
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from saelab.data.batches import ActivationLoader
from saelab.data.cache import MANIFEST, VERIFIED, ActivationCache, CacheError
from tests.data.test_cache import _builder, _spec
from tests.data.test_resume import BUILD, ROOT, _finish, _run, build_here
from tests.scale.helpers import env

from .conftest import flip_byte, nan_bytes


def _read_all(cache: ActivationCache) -> None:
    loader = ActivationLoader(cache, batch_size=128, block_size=64, shuffle=False, prefetch=0)
    for _ in loader:
        pass


@pytest.fixture
def cache(text_corpus, tmp_path):
    """A real cache of tiny-gemma-2 activations (4 shards), verified once by its builder."""
    builder = _builder(tmp_path, text_corpus)
    spec = _spec(builder, n_tokens=1800, shard_tokens=512)
    (built,) = builder.ensure([spec])
    assert (built.folder / VERIFIED).is_file()
    return builder, spec, built.folder


def test_a_byte_flipped_after_verification_is_caught_when_read(cache):
    builder, spec, folder = cache
    _read_all(ActivationCache(folder, spec))  # intact: reads fine
    flip_byte(folder / "shard_00002.npy", -300)  # inside the data, same size
    opened = ActivationCache(folder, spec)  # verify="first": opening checks sizes only
    with pytest.raises(CacheError, match=r"shard_00002\.npy: rows \d+\.\.\d+ do not match") as e:
        _read_all(opened)
    assert f"rm -r '{folder}'" in str(e.value)
    with pytest.raises(CacheError, match=r"shard_00002\.npy.*checksum"):
        ActivationCache(folder, spec, verify="always")  # the full check is still there


def test_a_damaged_verification_record_does_not_condemn_a_good_shard(cache):
    builder, spec, folder = cache
    record = json.loads((folder / VERIFIED).read_text())
    record["chunk_crc32"]["shard_00001.npy"][0] ^= 1
    (folder / VERIFIED).write_text(json.dumps(record))
    _read_all(ActivationCache(folder, spec))  # the manifest's digest decides: the shard is good


@pytest.mark.parametrize("verify", ["first", "never"])
def test_nan_bytes_beyond_the_normalisation_sample_stop_the_read_naming_the_shard(cache, verify):
    builder, spec, folder = cache
    opened = ActivationCache(folder, spec, verify=verify)
    opened.read(0, 256)  # the normalisation sample (shard 0) is clean
    # NaNs well inside shard 2, past its .npy header: rows the sample never reads.
    nan_bytes(folder / "shard_00002.npy", 4096, 512)
    reopened = ActivationCache(folder, spec, verify=verify)
    message = "do not match their checksum" if verify == "first" else "non-finite activations"
    with pytest.raises(
        CacheError, match=rf"{message}.*shard_00002\.npy|shard_00002\.npy.*{message}"
    ):
        _read_all(reopened)


def test_a_damaged_shard_record_of_an_interrupted_build_is_redone(cache, caplog):
    builder, spec, folder = cache
    reference = {p.name: p.read_bytes() for p in folder.glob("shard_*")}
    (folder / MANIFEST).unlink()  # as if killed before the manifest
    (folder / VERIFIED).unlink()
    (folder / "shard_00001.json").write_text('{"file": "shard_00001.npy", "rows": 51')  # cut
    with caplog.at_level(logging.WARNING):
        (rebuilt,) = builder.ensure([spec])
    assert "shard_00001.json is not a valid shard record" in caplog.text
    assert {p.name: p.read_bytes() for p in folder.glob("shard_*")} == reference
    _read_all(rebuilt)


# --- kill -9 at more points of the build (tests/data/test_resume.py kills after shard 3) ----
@pytest.fixture(scope="module")
def reference_build(tmp_path_factory) -> Path:
    return build_here(tmp_path_factory.mktemp("reference"))


def _same_cache(a: Path, b: Path) -> None:
    files = sorted(p.name for p in b.glob("shard_*"))
    assert files == sorted(p.name for p in a.glob("shard_*"))
    for name in files:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    ma, mb = (json.loads((f / MANIFEST).read_text()) for f in (a, b))
    ma.pop("build"), mb.pop("build")
    assert ma == mb


@pytest.mark.slow
@pytest.mark.parametrize(
    "moment",
    ["build.json", "shard_00000.json", "shard_00011.npy"],
    ids=["before-any-shard", "after-the-first-shard", "between-the-last-shard-and-its-record"],
)
def test_kill_9_at_another_point_of_the_build_then_rerun_gives_the_same_cache(
    tmp_path, reference_build, moment
):
    # The last moment is milliseconds before the build completes: on a busy machine the kill
    # can land after it. Such a cache is complete and must be right, but it did not test the
    # moment, so the build is killed again in a fresh folder.
    for attempt in range(5):
        root = tmp_path / f"attempt-{attempt}"
        proc = _run(root)
        deadline = time.time() + 240
        while proc.poll() is None and time.time() < deadline and not list(root.glob(f"*/{moment}")):
            time.sleep(0.001)
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        assert proc.returncode == -signal.SIGKILL, "the build ended before it was killed"
        completed = list(root.glob(f"*/{MANIFEST}"))
        if not completed:  # killed at the moment: never mistaken for a complete cache
            break
        _same_cache(completed[0].parent, reference_build)
    else:
        pytest.fail(f"five kills all landed after the build completed, not at {moment}")
    _same_cache(_finish(_run(root)), reference_build)


# --- a full disk ---------------------------------------------------------------------------
def _limit_file_size(limit: int):
    def apply() -> None:  # in the child: files may not grow past ``limit`` bytes (EFBIG)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


@pytest.mark.slow
def test_a_full_disk_during_the_build_fails_naming_the_file_and_leaves_nothing_complete(
    tmp_path, reference_build
):
    # 2,048 rows x 128 floats = 1 MiB per shard: the limit lets the small files through and
    # stops the first shard (as a full disk would).
    done = subprocess.run(
        [sys.executable, "-c", BUILD, str(tmp_path)],
        cwd=ROOT,
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=_limit_file_size(256 * 1024),
    )
    assert done.returncode != 0
    assert "could not write" in done.stderr and "shard_00000.npy" in done.stderr, done.stderr[
        -2000:
    ]
    assert "File too large" in done.stderr
    assert not list(tmp_path.glob(f"*/{MANIFEST}")) and not list(tmp_path.glob("*/*.tmp"))
    _same_cache(_finish(_run(tmp_path)), reference_build)  # the rerun finishes it


def test_atomic_writes_name_the_file_when_the_disk_is_full(tmp_path):
    """Any atomic write past the limit names its file and leaves the old one, no temp file."""
    from saelab.fileio import WriteError, write_json

    target = tmp_path / "metrics.json"
    write_json(target, {"a": 1})
    code = (
        "import resource, sys\n"
        "from saelab.fileio import write_json\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))\n"
        "write_json(sys.argv[1], {'x': 'y' * 10000})\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(target)], env=env(), capture_output=True, text=True
    )
    assert done.returncode != 0
    assert f"could not write {target}: File too large" in done.stderr
    assert WriteError.__name__ in done.stderr
    assert json.loads(target.read_text()) == {"a": 1} and not list(tmp_path.glob("*.tmp"))
    assert os.path.getsize(target) < 4096
