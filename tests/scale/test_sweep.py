"""Sweeps read the activation cache, they do not rebuild it: a Hydra multirun of two DDP jobs
builds the cache once, and two runs started at the same moment (what a parallel launcher such as
joblib or submitit does) build each cache once between them: whoever holds a cache folder's
lock builds it, the other waits and then reads it."""

from __future__ import annotations

import json

import pytest

from .helpers import start_train_py, train_py

# layer 1 of the embedded tiny-gemma-2 and a few thousand tokens: a cache in seconds.
TINY_ACTS = [
    "layer=1",
    "data.context_length=64",
    "data.train_tokens=4096",
    "data.val_tokens=1024",
    "data.batch_size=512",
    "data.shard_tokens=2048",
    "data.progress=false",
    "data.device=cpu",
    "sae.expansion_factor=4",
    "sae.normalization_tokens=2048",
    "trainer=debug",
    "trainer.max_steps=4",
    "logger=none",
    "eval_tokens=0",
]
BUILT = "activation cache complete"  # logged by the process that builds a cache, never by a reader


def _builds(log: str) -> int:
    return log.count(BUILT)


@pytest.mark.slow
def test_a_multirun_of_two_ddp_jobs_builds_the_cache_once_and_keeps_each_in_its_folder(tmp_path):
    cache, sweep = tmp_path / "cache", tmp_path / "sweep"
    # Each job runs 2 DDP ranks: the cache is built in prepare_data by rank 0 of the first job.
    no_debug = [a for a in TINY_ACTS if a != "trainer=debug"]
    train_py(
        [
            "-m",
            *no_debug,
            "data.batch_size=256",
            "trainer=ddp",
            "trainer.devices=2",
            "trainer.enable_progress_bar=false",
            "trainer.max_steps=4",
            "sae=jumprelu,relu",
            f"data.cache_dir={cache}",
            f"hydra.sweep.dir={sweep}",
        ]
    )
    logs = [(sweep / job / "train.log").read_text() for job in ("0", "1")]
    assert [_builds(log) for log in logs] == [
        2,
        0,
    ]  # job 0 built train + validation; job 1 read them
    assert len(list(cache.iterdir())) == 2
    # Each job's ranks write in that job's folder: one folder per job, no stray rank folders.
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]
    for job, family in (("0", "jumprelu"), ("1", "relu")):
        config = json.loads((sweep / job / "config.json").read_text())
        assert json.loads((sweep / job / "metrics.json").read_text())["family"] == family
        assert config["output_dir"] == str(sweep / job)
        assert json.loads((sweep / job / "metrics.json").read_text())["steps"] == 4


@pytest.mark.slow
def test_two_runs_started_together_build_the_cache_once(tmp_path):
    cache = tmp_path / "cache"
    procs = [
        start_train_py(
            [
                *TINY_ACTS,
                f"sae={family}",
                f"data.cache_dir={cache}",
                f"hydra.run.dir={tmp_path / family}",
            ]
        )
        for family in ("jumprelu", "topk")
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=400)
        assert proc.returncode == 0, err[-3000:]
    logs = "".join((tmp_path / family / "train.log").read_text() for family in ("jumprelu", "topk"))
    manifests = sorted(cache.glob("*/manifest.json"))
    assert len(manifests) == 2  # train and validation
    for manifest in manifests:  # each cache built by exactly one of the two processes
        assert logs.count(f"{BUILT}: {manifest.parent}") == 1, manifest.parent.name
