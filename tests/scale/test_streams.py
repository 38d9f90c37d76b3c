"""The data side of DDP and resume: w ranks with batch B read, step for step, exactly the rows one
process with batch w*B reads (both sources), and a resumed Lightning run on synthetic data
continues at the next unread batch."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch

from saelab.data.batches import ActivationLoader
from saelab.data.synthetic import SyntheticDataConfig, SyntheticStream
from tests.data.conftest import write_cache

SYNTH = {"d_in": 8, "n_features": 32, "mean_l0": 3, "block_tokens": 32, "val_tokens": 256}


def _ranks_match_one_process(streams_by_rank, one_process, steps: int) -> None:
    per_rank = [iter(s) for s in streams_by_rank]
    single = iter(one_process)
    for _ in range(steps):
        together = torch.cat([next(it) for it in per_rank])
        assert torch.equal(together, next(single))


@pytest.mark.parametrize("world", [2, 4])
def test_synthetic_ranks_with_batch_b_read_what_one_process_with_batch_wb_reads(world):
    ranks = [
        SyntheticStream(
            SyntheticDataConfig(**SYNTH, batch_size=64).build().train_set,
            rank=r,
            world_size=world,
            prefetch=0,
        )
        for r in range(world)
    ]
    single = SyntheticStream(
        SyntheticDataConfig(**SYNTH, batch_size=64 * world).build().train_set, prefetch=0
    )
    _ranks_match_one_process(ranks, single, steps=5)


def test_cache_ranks_with_batch_b_read_what_one_process_with_batch_2b_reads(tmp_path):
    cache = write_cache(tmp_path / "c", [512, 512])  # rows hold their own index
    ranks = [ActivationLoader(cache, 64, 32, seed=4, rank=r, world_size=2) for r in range(2)]
    _ranks_match_one_process(
        ranks, ActivationLoader(cache, 128, 32, seed=4), steps=8
    )  # a whole epoch


def test_the_normalisation_sample_does_not_depend_on_the_batch_size():
    a = SyntheticDataConfig(**SYNTH, batch_size=64).build().sample_activations(200)
    b = SyntheticDataConfig(**SYNTH, batch_size=128).build().sample_activations(200)
    assert a.shape == (224, 8) and torch.equal(a, b)  # whole 32-token blocks


def test_without_block_tokens_the_synthetic_data_are_unchanged():
    # block_tokens=None keeps the original definition: batch i is one seeded draw of batch_size.
    from saelab.data.synthetic import SyntheticFeatures, _batch_seed

    cfg = SyntheticDataConfig(d_in=8, n_features=32, mean_l0=3, batch_size=64)
    expected = SyntheticFeatures(cfg).sample(
        64, torch.Generator().manual_seed(_batch_seed(0, "train", 3))
    )[0]
    assert torch.equal(cfg.build().train_set[3], expected)


def test_block_tokens_must_divide_the_batch():
    with pytest.raises(ValueError, match="data.block_tokens=48 is invalid.*must divide batch_size"):
        SyntheticDataConfig(batch_size=64, block_tokens=48)


class _Recorder(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[torch.Tensor] = []

    def training_step(self, batch, batch_idx):
        self.seen.append(batch.clone())
        return (self.w * batch.mean()) ** 2

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def _fit(tmp_path, steps, ckpt_path=None):
    model = _Recorder()
    dm = SyntheticDataConfig(**SYNTH, batch_size=32, train_tokens=32 * 5).build()  # 5-batch epochs
    trainer = pl.Trainer(
        max_steps=steps,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        default_root_dir=tmp_path,
        callbacks=[
            pl.callbacks.ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=7, save_top_k=-1)
        ],
    )
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    return model.seen


def test_a_resumed_run_on_synthetic_data_continues_at_the_next_batch(tmp_path):
    full = _fit(tmp_path / "a", 12)
    resumed = _fit(tmp_path / "b", 12, ckpt_path=tmp_path / "a" / "epoch=1-step=7.ckpt")
    assert len(resumed) == 5 and all(torch.equal(x, y) for x, y in zip(resumed, full[7:]))
