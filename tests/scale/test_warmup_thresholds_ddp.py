"""The threshold warm-up under DDP: ranks that each hold half a batch compute exactly the
thresholds one process computes on the whole batch (pooled, per latent and per token). Two real gloo
processes."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from saelab.lit.sync import DistributedSync
from saelab.sae import build_training


def _batch():
    torch.manual_seed(0)
    sae, objective = build_training("jumprelu", d_in=8, d_sae=32)
    x = torch.randn(512, 8) * torch.linspace(0.5, 3, 8)
    return objective, sae.pre_acts(x).detach()


def _rank(rank: int, world: int, store: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        objective, z = _batch()
        objective.sync = DistributedSync()  # the trainer's channel between ranks
        half = z.chunk(world)[rank]
        got = {
            mode: objective.quantile_thresholds(half, 5, pooled=mode == "pooled")
            for mode in ("pooled", "per_latent")
        }
        got["per_token"] = objective.per_token_thresholds(half, 5)[1]
        if rank == 0:
            torch.save(got, out)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # a subprocess or a multi-site cache: seconds
def test_ranks_get_the_thresholds_of_the_whole_batch(tmp_path):
    out = tmp_path / "ranks.pt"
    mp.spawn(_rank, args=(2, str(tmp_path / "store"), str(out)), nprocs=2, join=True)
    got = torch.load(out, weights_only=True)
    objective, z = _batch()
    for mode in ("pooled", "per_latent"):
        whole = objective.quantile_thresholds(z, 5, pooled=mode == "pooled")
        assert torch.equal(got[mode], whole), mode
        # and it is the quantile: L0 on the whole batch is exactly 5
        assert (z > whole).float().sum(1).mean().item() == 5.0
    # Per token: each rank keeps its own rows' 5 largest, and the rate-matching thresholds are
    # over both ranks' rows: exactly TopK's count of each latent on the whole batch exceeds them.
    whole = objective.per_token_thresholds(z, 5)[1]
    assert torch.equal(got["per_token"], whole)
    kept = (z >= z.topk(5, dim=1).values[:, -1:].clamp_min(1e-6)).sum(0)
    assert torch.equal((z > whole).sum(0), kept)
    halves = [objective.quantile_thresholds(h, 5, pooled=True) for h in z.chunk(2)]
    assert not torch.equal((halves[0] + halves[1]) / 2, got["pooled"]), (
        "averaging halves is not the same"
    )
