from __future__ import annotations

import pytest
import torch

from saelab.data.synthetic import SyntheticDataConfig, SyntheticFeatures


def test_batches_are_deterministic_and_splits_differ():
    cfg = SyntheticDataConfig(d_in=8, n_features=32, mean_l0=3, batch_size=64, val_tokens=128)
    a, b = cfg.build(), cfg.build()
    torch.testing.assert_close(a.train_set[5], b.train_set[5])
    assert not torch.equal(a.train_set[0], a.val_set[0])
    assert not torch.equal(a.train_set[0], a.train_set[1])
    other = SyntheticDataConfig(d_in=8, n_features=32, mean_l0=3, batch_size=64, seed=1).build()
    assert not torch.equal(a.train_set[0], other.train_set[0])


def test_generated_tokens_have_the_requested_statistics():
    cfg = SyntheticDataConfig(d_in=16, n_features=128, mean_l0=6, prob_spread=4)
    truth = SyntheticFeatures(cfg)
    torch.testing.assert_close(truth.features.norm(dim=1), torch.ones(128))
    assert truth.probs.max() / truth.probs.min() <= 4.0 + 1e-4
    x, coeffs = truth.sample(20_000, torch.Generator().manual_seed(0))
    assert (coeffs != 0).sum(1).float().mean().item() == pytest.approx(6, rel=0.03)
    torch.testing.assert_close(x, coeffs @ truth.features)


@pytest.mark.parametrize(
    "bad", [{"mean_l0": 0}, {"batch_size": 0}, {"mean_l0": 100, "n_features": 120}]
)
def test_invalid_config_is_refused(bad):
    with pytest.raises(ValueError, match="data\\."):
        SyntheticDataConfig(**bad)
