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


# --- the options that make synthetic data look more like LM activations -------------------------
def _options(**kw) -> SyntheticDataConfig:
    base = dict(d_in=32, n_features=256, mean_l0=8, batch_size=512, val_tokens=512)
    return SyntheticDataConfig(**{**base, **kw})


def test_default_draws_are_unchanged_by_the_new_options():
    # The options must not shift the random stream of the default generator: the same seed gives
    # the same directions and probabilities whatever the (inactive) option values are.
    a = SyntheticFeatures(_options())
    b = SyntheticFeatures(_options(zipf_exponent=2.0, cofire_prob=0.9, lognormal_sigma=3.0))
    torch.testing.assert_close(a.features, b.features, rtol=0, atol=0)
    torch.testing.assert_close(a.probs, b.probs, rtol=0, atol=0)


def test_power_law_frequencies_have_the_configured_exponent():
    cfg = _options(frequencies="power_law", zipf_exponent=0.8, n_features=128, mean_l0=6)
    truth = SyntheticFeatures(cfg)
    _, coeffs = truth.sample(40_000, torch.Generator().manual_seed(0))
    freq = (coeffs > 0).float().mean(0)
    ranks = torch.arange(1, 129, dtype=torch.float64)
    # Least-squares slope of log frequency on log rank, fitted on the generated tokens.
    lx, ly = ranks.log(), freq.double().log()
    slope = ((lx - lx.mean()) * (ly - ly.mean())).sum() / (lx - lx.mean()).pow(2).sum()
    assert slope.item() == pytest.approx(-0.8, abs=0.05)
    assert (coeffs != 0).sum(1).float().mean().item() == pytest.approx(6, rel=0.03)


def test_clusters_cofire_and_clusters_are_independent():
    cfg = _options(cluster_size=4, cofire_prob=0.6, prob_spread=2)
    truth = SyntheticFeatures(cfg)
    _, coeffs = truth.sample(40_000, torch.Generator().manual_seed(1))
    on = (coeffs > 0).float()
    corr = torch.corrcoef(on.T)
    q = truth.cluster_probs[0]
    expected = 0.6 * (1 - q) / (1 - 0.6 * q)
    assert corr[0, 1].item() == pytest.approx(expected.item(), abs=0.03)  # same cluster
    assert abs(corr[0, 4].item()) < 0.03  # features of two different clusters
    assert on.sum(1).mean().item() == pytest.approx(8, rel=0.03)
    torch.testing.assert_close(truth.probs[:4], torch.full((4,), float(q) * 0.6))


def test_lognormal_magnitudes_are_heavy_tailed_with_the_configured_mean():
    cfg = _options(magnitudes="lognormal", lognormal_sigma=1.0, magnitude_mean=2.0)
    _, coeffs = SyntheticFeatures(cfg).sample(20_000, torch.Generator().manual_seed(2))
    m = coeffs[coeffs > 0]
    assert m.log().std().item() == pytest.approx(1.0, abs=0.03)
    assert m.mean().item() == pytest.approx(2.0, rel=0.05)
    assert (m.max() / m.median()).item() > 20  # a folded normal of the same mean has ~3


def test_outlier_tokens_are_massive_rare_and_along_fixed_dimensions():
    cfg = _options(outlier_fraction=0.02, outlier_scale=30.0, outlier_dims=3)
    truth = SyntheticFeatures(cfg)
    x, coeffs = truth.sample(20_000, torch.Generator().manual_seed(3))
    norms = x.norm(dim=1)
    median = norms.median()
    massive = norms > 10 * median
    assert massive.float().mean().item() == pytest.approx(0.02, abs=0.004)
    assert (norms[massive] / median).median().item() == pytest.approx(30, rel=0.1)
    # Almost all of an outlier token's energy sits on the same 3 coordinate axes.
    on_dims = x[massive][:, truth.outlier_dim_index].pow(2).sum(1) / norms[massive].pow(2)
    assert on_dims.min().item() > 0.95
    assert len(truth.outlier_dim_index) == 3
    # The massive part is not a true feature: coefficients hold the ordinary tokens' features.
    assert (coeffs != 0).sum(1).float().mean().item() == pytest.approx(8, rel=0.05)


def test_new_options_keep_blocks_deterministic():
    cfg = _options(
        frequencies="power_law",
        zipf_exponent=0.7,
        cluster_size=2,
        magnitudes="lognormal",
        outlier_fraction=0.01,
        block_tokens=128,
    )
    a, b = cfg.build(), cfg.build()
    torch.testing.assert_close(a.train_set[3], b.train_set[3], rtol=0, atol=0)
    assert not torch.equal(a.train_set[3], a.train_set[4])


@pytest.mark.parametrize(
    "bad, key",
    [
        ({"frequencies": "zipf"}, "frequencies"),
        ({"cluster_size": 3}, "cluster_size"),  # does not divide 256
        ({"cofire_prob": 0.0}, "cofire_prob"),
        ({"magnitudes": "pareto"}, "magnitudes"),
        ({"outlier_fraction": 1.0}, "outlier_fraction"),
        ({"outlier_dims": 33}, "outlier_dims"),
        ({"frequencies": "power_law", "zipf_exponent": 3.0}, "zipf_exponent"),
    ],
)
def test_invalid_options_are_refused_naming_the_key(bad, key):
    with pytest.raises(ValueError, match=f"data\\.{key}="):
        _options(**bad)
