"""The loader: contiguous blocks, a seeded per-epoch order, disjoint DDP ranks that cover the
cache, float32 batches from any storage dtype, and a position that can be saved and restored."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from saelab.data.batches import ActivationLoader

from .conftest import row_ids, write_cache


def _blocks(batch: torch.Tensor, block: int) -> list[int]:
    """First row of each contiguous block in a batch, checking each block IS contiguous."""
    ids = row_ids(batch).reshape(-1, block)
    assert (np.diff(ids, axis=1) == 1).all()
    return list(ids[:, 0])


def test_batches_are_shuffled_contiguous_blocks_covering_the_cache_once_per_epoch(tmp_path):
    cache = write_cache(tmp_path / "c", [96, 96, 70])  # the 70-row shard keeps 64 (2 blocks)
    loader = ActivationLoader(cache, batch_size=64, block_size=32, seed=3)
    assert len(loader) == 4 and len(loader.blocks) == 8
    epoch0 = list(loader)
    assert all(b.shape == (64, 4) and b.dtype == torch.float32 for b in epoch0)
    starts = sorted(s for b in epoch0 for s in _blocks(b, 32))
    assert starts == [0, 32, 64, 96, 128, 160, 192, 224]  # every full block exactly once
    assert starts != [s for b in epoch0 for s in _blocks(b, 32)]  # ... in a shuffled order
    epoch1 = list(loader)
    assert [row_ids(b).tolist() for b in epoch1] != [row_ids(b).tolist() for b in epoch0]
    again = list(ActivationLoader(cache, batch_size=64, block_size=32, seed=3))
    assert all(torch.equal(a, b) for a, b in zip(again, epoch0))  # deterministic for a seed
    other = list(ActivationLoader(cache, batch_size=64, block_size=32, seed=4))
    assert not all(torch.equal(a, b) for a, b in zip(other, epoch0))


@pytest.mark.parametrize("world", [2, 3])
def test_ddp_ranks_get_disjoint_data_that_together_covers_the_cache(tmp_path, world):
    cache = write_cache(tmp_path / "c", [192, 192, 192])  # 18 blocks of 32 = 9 global batches of 64
    seen = []
    for rank in range(world):
        loader = ActivationLoader(cache, 64, 32, seed=1, rank=rank, world_size=world)
        rows = np.concatenate([row_ids(b) for b in loader])
        assert len(loader) == 9 // world and len(rows) == len(loader) * 64
        seen.append(set(rows.tolist()))
    for i in range(world):
        for j in range(i + 1, world):
            assert not seen[i] & seen[j]
    union = set().union(*seen)
    if world == 3:
        assert union == set(range(576))  # 9 batches split 3 ways: everything
    else:  # 9 batches over 2 ranks: 4 each, the odd one dropped so ranks stay in step
        assert len(union) == 8 * 64 and union <= set(range(576))


def test_restored_position_continues_exactly_across_epochs(tmp_path):
    cache = write_cache(tmp_path / "c", [128, 128])
    reference = ActivationLoader(cache, 32, 16, seed=0)
    stream = [b for _ in range(3) for b in reference]  # 3 epochs of 8 batches
    loader = ActivationLoader(cache, 32, 16, seed=0)
    taken = []
    it = iter(loader)
    for _ in range(11):  # into the second epoch
        try:
            taken.append(next(it))
        except StopIteration:
            it = iter(loader)
            taken.append(next(it))
    state = loader.state_dict()
    assert state["epoch"] == 1 and state["offset"] == 3
    resumed = ActivationLoader(cache, 32, 16, seed=0)
    resumed.load_state_dict(state)
    rest = list(resumed) + list(resumed)
    assert len(taken) + len(rest) == len(stream)
    for a, b in zip(taken + rest, stream):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="batch_size=32 but this run has batch_size=64"):
        ActivationLoader(cache, 64, 16, seed=0).load_state_dict(state)


def test_position_is_global_so_a_changed_world_size_neither_repeats_nor_skips(tmp_path):
    cache = write_cache(tmp_path / "c", [256])  # 8 global batches of 32
    one = ActivationLoader(cache, 32, 32, seed=2)
    it = iter(one)
    first = [next(it) for _ in range(2)]
    state = one.state_dict()
    rest = []
    for rank in range(2):
        loader = ActivationLoader(cache, 32, 32, seed=2, rank=rank, world_size=2)
        loader.load_state_dict(state)
        rest += list(loader)
    rows = np.concatenate([row_ids(b) for b in first + rest])
    assert sorted(rows.tolist()) == list(range(256))


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_any_storage_dtype_reads_as_exact_float32(tmp_path, dtype):
    cache = write_cache(tmp_path / "c", [64], d_in=3, dtype=dtype)  # integers < 256: exact in all
    batch = next(iter(ActivationLoader(cache, 64, 8, shuffle=False)))
    assert batch.dtype == torch.float32
    torch.testing.assert_close(batch, torch.arange(64.0)[:, None].expand(64, 3), rtol=0, atol=0)
    torch.testing.assert_close(cache.read(10, 20)[:, 0], torch.arange(10.0, 20.0), rtol=0, atol=0)


def test_abandoned_iteration_stops_the_prefetch_thread(tmp_path):
    cache = write_cache(tmp_path / "c", [512])
    before = threading.active_count()
    it = iter(ActivationLoader(cache, 32, 16, prefetch=2))
    next(it)
    assert threading.active_count() == before + 1
    it.close()
    assert threading.active_count() == before


def test_too_small_a_cache_for_the_ranks_is_refused(tmp_path):
    cache = write_cache(tmp_path / "c", [64])
    with pytest.raises(ValueError, match="fewer than one batch of 64 per rank for 2 rank"):
        ActivationLoader(cache, 64, 32, world_size=2, rank=1)


def test_external_tracking_counts_only_batches_really_used(tmp_path):
    # A consumer that fetches ahead (as Lightning can) must not move the saved position.
    cache = write_cache(tmp_path / "c", [256])
    loader = ActivationLoader(cache, 32, 16, seed=0, track="external")
    it = iter(loader)
    fetched = [next(it) for _ in range(4)]  # 4 fetched ...
    for _ in range(2):  # ... 2 used
        loader.mark_consumed()
    resumed = ActivationLoader(cache, 32, 16, seed=0)
    resumed.load_state_dict(loader.state_dict())
    assert torch.equal(next(iter(resumed)), fetched[2])


def test_validation_order_restarts_every_time_even_when_cut_short(tmp_path):
    cache = write_cache(tmp_path / "c", [256])
    loader = ActivationLoader(cache, 32, 16, shuffle=False, track="none")
    first = [b for b, _ in zip(loader, range(2))]  # limit_val_batches=2
    again = list(loader)
    assert len(again) == 8 and all(torch.equal(a, b) for a, b in zip(first, again))
    assert row_ids(again[0])[0] == 0 and row_ids(again[-1])[-1] == 255  # in stored order
