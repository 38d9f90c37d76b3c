"""torchmetrics metrics against direct tensor computations over the whole set."""

from __future__ import annotations

import torch

from saelab.metrics import (
    FVU,
    L0,
    FeatureDensity,
    FeatureRecovery,
    RelativeReconstructionBias,
    density_summary,
)


def _batches(n=5):
    g = torch.Generator().manual_seed(3)
    for _ in range(n):
        x = torch.randn(37, 6, generator=g) * 2 + torch.arange(6.0)
        x_hat = x + 0.3 * torch.randn(37, 6, generator=g)
        f = torch.relu(torch.randn(37, 10, generator=g) - 1)
        yield x, x_hat, f


def test_fvu_l0_density_bias_match_direct_computation():
    fvu, l0, density, bias = FVU(6), L0(), FeatureDensity(10), RelativeReconstructionBias()
    xs, xhs, fs = [], [], []
    for x, x_hat, f in _batches():
        fvu.update(x, x_hat)
        l0.update(f)
        density.update(f)
        bias.update(x, x_hat)
        xs.append(x)
        xhs.append(x_hat)
        fs.append(f)
    x, x_hat, f = torch.cat(xs), torch.cat(xhs), torch.cat(fs)
    expected_fvu = ((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    torch.testing.assert_close(fvu.compute(), expected_fvu)
    torch.testing.assert_close(l0.compute(), (f != 0).sum(1).float().mean())
    torch.testing.assert_close(density.compute(), (f != 0).float().mean(0))
    torch.testing.assert_close(bias.compute(), (x_hat**2).sum() / (x * x_hat).sum())


def test_fvu_uses_per_dimension_mean_not_zero():
    # Large offset, perfect shape: the standard FVU is small only if mu is subtracted.
    x = torch.randn(100, 4) + 50
    metric = FVU(4)
    metric.update(x, x.mean(0).expand_as(x))
    torch.testing.assert_close(metric.compute(), torch.tensor(1.0))


def test_density_summary_fractions():
    density = torch.tensor([0.0, 0.0, 0.005, 0.02, 0.5])
    s = density_summary(density)
    assert (
        s["dead_fraction"] == 0.4
        and s["dense_1pct_fraction"] == 0.4
        and s["dense_10pct_fraction"] == 0.2
    )


def test_feature_recovery():
    true = torch.eye(4)
    learned = torch.cat([torch.eye(4)[:3] * 5, torch.tensor([[1.0, 1.0, 0, 0]])])  # 3 exact, 1 off
    metric = FeatureRecovery(true)
    metric.update(learned)
    out = metric.compute()
    torch.testing.assert_close(out["recovered_fraction"], torch.tensor(0.75))
    torch.testing.assert_close(out["mmcs"], torch.tensor((3 + 0) / 4))  # e_4 has cosine 0 with all
