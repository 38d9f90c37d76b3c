"""data.stored_batches: SynthSAEBench batches drawn once into the cache are read back as the very
batches drawing gives, and a store that is damaged, half-written or someone else's is never read
as these draws."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("sae_lens.synthetic")

from saelab.data import synthsaebench_draws as draws
from saelab.data.synthsaebench import model_folder
from tests.data.test_synthsaebench import tiny


def store_of(cfg):
    return draws.store_path(model_folder(cfg), "train", cfg.seed, cfg.batch_size)


def test_stored_batches_are_the_drawn_batches_bit_for_bit(tmp_path):
    drawn = tiny(tmp_path).build().split("train")
    dm = tiny(tmp_path, stored_batches=3).build()
    dm.prepare_data()
    path = store_of(dm.cfg)
    assert path.stat().st_size == 3 * 128 * 16 * 4
    train = dm.split("train")
    for g in range(5):  # three read from the store, then drawn as usual
        assert torch.equal(train[g], drawn[g])
    # The store is what is read: a later run does not draw the stored batches again.
    reads = tiny(tmp_path, stored_batches=3).build()
    reads.prepare_data()
    reads.model.sample_with_features = None  # drawing now would fail
    assert torch.equal(reads.split("train")[2], drawn[2])
    # A run asking for fewer reads the first of them; one asking for more redraws the store.
    assert len(tiny(tmp_path, stored_batches=2).build().stored_draws()) == 2
    more = tiny(tmp_path, stored_batches=4).build()
    assert len(more.stored_draws()) == 4 and torch.equal(more.split("train")[3], drawn[3])
    # The normalisation estimate reads the same tokens.
    torch.testing.assert_close(
        more.sample_activations(256), torch.cat([drawn[0], drawn[1]]), rtol=0, atol=0
    )


def test_a_damaged_or_foreign_store_is_refused_and_a_half_written_one_redrawn(tmp_path):
    cfg = tiny(tmp_path, stored_batches=2)
    cfg.build().prepare_data()
    path = store_of(cfg)
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=f"{path.name} .*does not match its digest.*delete"):
        cfg.build().prepare_data()
    path.write_bytes(bytes(data[:-4]))
    with pytest.raises(ValueError, match="truncated"):
        cfg.build().prepare_data()
    # Another seed's manifest over these draws: refused, naming what differs.
    manifest = path.with_suffix(".json")
    m = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**m, "seed": 7}))
    with pytest.raises(ValueError, match="describes other draws"):
        cfg.build().prepare_data()
    # A store whose manifest never got written (a crash while drawing) is drawn again.
    manifest.unlink()
    dm = cfg.build()
    dm.prepare_data()
    assert torch.equal(dm.split("train")[1], tiny(tmp_path).build().split("train")[1])


def test_a_store_from_another_sampler_is_refused(tmp_path):
    cfg = tiny(tmp_path, stored_batches=2)
    cfg.build().prepare_data()
    path = store_of(cfg)
    # Rewrite the store, with a valid manifest, from different draws (as another sae-lens
    # version's sampler would give).
    other = tiny(tmp_path, seed=1).build().split("train")
    assert not torch.equal(other[0], tiny(tmp_path).build().split("train")[0])
    key = json.loads(path.with_suffix(".json").read_text())["model_key"]
    draws.write(OtherSampler(other, seed=cfg.seed), key, path, 2)
    with pytest.raises(ValueError, match="differ from the ones this SAELens draws"):
        cfg.build().prepare_data()


def test_stored_batches_must_not_be_negative(tmp_path):
    with pytest.raises(ValueError, match=r"data\.stored_batches=-1"):
        tiny(tmp_path, stored_batches=-1)


class OtherSampler:
    """Batches drawn some other way, under the run's own split, seed and batch size."""

    def __init__(self, batches, seed: int):
        self.batches, self.seed = batches, seed
        self.split, self.batch_size = batches.split, batches.batch_size

    def __getitem__(self, index: int):
        return self.batches[index]
