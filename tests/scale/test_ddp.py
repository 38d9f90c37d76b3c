"""DDP and FSDP on CPU (gloo), through train.py as users run it: two ranks with batch B end with
the weights of one process with batch 2B (same tokens, gradients averaged; float tolerance
because the all-reduce sums in another order), every rank writes into the one run folder, only
rank 0 writes the outputs, and a Hydra multirun launches each job's ranks into that job's folder.
"""

from __future__ import annotations

import json
import shutil

import lightning.pytorch as pl
import pytest
import torch
from hydra.utils import instantiate

from saelab.lit.sharding import SAEShardingStrategy
from saelab.runner import build
from tests.conftest import compose_config

from .helpers import TINY, exported, train_here, train_py

RUN = [*TINY, "sae=jumprelu"]
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    run = tmp_path_factory.mktemp("single")
    train_here([*RUN, "data.batch_size=256"], run)
    return run


def _compare_with_one_process(run, one_process, tmp_path) -> None:
    single, multi = exported(one_process / "sae"), exported(run / "sae")
    for key in single:
        torch.testing.assert_close(multi[key], single[key], rtol=0, atol=TOLERANCE, msg=key)
    # ... and that is a strong statement: training moved the weights far beyond the tolerance.
    pl.seed_everything(0)
    init = build(compose_config([*RUN, "data.batch_size=256"], tmp_path))[1].sae
    assert (single["W_dec"] - init.W_dec).abs().max() > 1000 * TOLERANCE
    a, b = (json.loads((r / "metrics.json").read_text()) for r in (one_process, run))
    assert a["activation_scale"] == pytest.approx(b["activation_scale"], rel=1e-6)
    assert a["val/fvu"] == pytest.approx(b["val/fvu"], rel=1e-4)  # the same validation tokens


@pytest.mark.slow
def test_ddp_two_ranks_with_batch_b_match_one_process_with_batch_2b(tmp_path, one_process):
    run = tmp_path / "runs" / "ddp"
    train_py(
        [*RUN, "data.batch_size=128", "trainer=ddp", "trainer.devices=2", f"hydra.run.dir={run}"]
    )
    _compare_with_one_process(run, one_process, tmp_path)
    # Rank 1 was given rank 0's folder: nothing was written anywhere else.
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["ddp"]
    assert json.loads((run / "config.json").read_text())["trainer"]["strategy"] == "ddp"


@pytest.mark.slow
def test_fsdp_two_ranks_with_batch_b_match_one_process_with_batch_2b(tmp_path, one_process):
    run = tmp_path / "fsdp"
    train_py(
        [*RUN, "data.batch_size=128", "trainer=fsdp", "trainer.devices=2", f"hydra.run.dir={run}"]
    )
    _compare_with_one_process(run, one_process, tmp_path)
    ckpt = run / "checkpoints" / "last.ckpt"
    assert ckpt.is_dir() and len(list(ckpt.glob("*.distcp"))) == 2  # one shard file per rank
    assert (run / "checkpoints" / "digests.json").is_file()  # checksummed like file checkpoints
    # Without its exports, the same command finds the sharded checkpoint, verifies it, restores
    # it (already at max_steps) and exports the very same weights: the shards were saved and
    # loaded faithfully. (With its exports in place, the finished run is left alone.)
    before = exported(run / "sae")
    shutil.rmtree(run / "sae")
    (run / "metrics.json").unlink()
    rerun = train_py(
        [*RUN, "data.batch_size=128", "trainer=fsdp", "trainer.devices=2", f"hydra.run.dir={run}"]
    )
    assert "resuming from" in rerun.stdout + rerun.stderr
    after = exported(run / "sae")
    assert all(torch.equal(before[k], after[k]) for k in before)


# --- composition (fast) ------------------------------------------------------------------
def test_ddp_and_fsdp_options_compose_with_overridable_devices_and_nodes(tmp_path):
    ddp = compose_config(["trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2"], tmp_path)
    assert (ddp.trainer.strategy, ddp.trainer.devices, ddp.trainer.num_nodes) == ("ddp", 4, 2)
    fsdp = compose_config(["trainer=fsdp"], tmp_path)
    strategy = instantiate(fsdp.trainer.strategy)
    assert isinstance(strategy, SAEShardingStrategy) and strategy._save_distributed_checkpoint
    for cfg in (ddp, fsdp):  # everything else comes from trainer/default.yaml
        assert cfg.trainer.gradient_clip_val == 1.0 and cfg.trainer.max_steps == 2000
