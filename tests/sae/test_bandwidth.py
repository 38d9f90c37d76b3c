"""Bandwidth rules for the JumpReLU STE: the canonical constants are those of the kernels as
implemented, and on samples from known distributions the rules give their textbook values."""

from __future__ import annotations

import math

import pytest
import torch

from saelab.sae.bandwidth import CANONICAL_BANDWIDTH, gaussian_bandwidth, kde_bandwidth
from saelab.sae.kernels import KERNELS


@pytest.mark.parametrize("kernel", sorted(CANONICAL_BANDWIDTH))
def test_canonical_bandwidth_matches_the_implemented_kernel(kernel):
    u = torch.linspace(-8, 8, 400_001, dtype=torch.float64)
    k = KERNELS[kernel](u)
    du = float(u[1] - u[0])
    assert float(k.sum() * du) == pytest.approx(1, abs=1e-4)
    roughness, second_moment = float((k * k).sum() * du), float((u * u * k).sum() * du)
    assert CANONICAL_BANDWIDTH[kernel] == pytest.approx(
        (roughness / second_moment**2) ** 0.2, rel=1e-3
    )


def test_rules_on_normal_samples_give_their_textbook_values():
    torch.manual_seed(0)
    n, scales = 200_000, torch.tensor([0.5, 1.0, 3.0])
    z = torch.randn(n, 3) * scales + torch.tensor([-1.0, 0.0, 2.0])  # the mean must not matter
    factor = n**-0.2
    assert gaussian_bandwidth(z, "scott") == pytest.approx(1.06 * scales * factor, rel=0.01)
    # For a normal, IQR / 1.349 = sigma, so Silverman's is 0.9 sigma n^(-1/5).
    assert gaussian_bandwidth(z, "silverman") == pytest.approx(0.9 * scales * factor, rel=0.01)


def test_silverman_is_robust_to_a_heavy_tail_and_scott_is_not():
    torch.manual_seed(0)
    n = 100_000
    bulk = torch.randn(n, 1) * 0.1
    tail = torch.rand(n, 1) < 0.05  # 5% of tokens fire far out, as an SAE latent's z does
    z = torch.where(tail, bulk + 5.0, bulk)
    silverman, scott = gaussian_bandwidth(z, "silverman"), gaussian_bandwidth(z, "scott")
    assert silverman.item() == pytest.approx(0.9 * 0.1 * 1.1 * n**-0.2, rel=0.15)  # IQR of the bulk
    assert scott.item() > 5 * silverman.item()


def test_kernel_conversion_and_sample_count():
    z = torch.randn(10_000, 4)
    h_gauss = gaussian_bandwidth(z, "silverman")
    ratio = CANONICAL_BANDWIDTH["rectangle"] / CANONICAL_BANDWIDTH["gaussian"]
    assert ratio == pytest.approx(3.48, abs=0.01)
    assert torch.allclose(kde_bandwidth(z, "silverman", "rectangle"), h_gauss * ratio)
    # n scales as n^(-1/5): 32x more samples, half the bandwidth
    assert torch.allclose(
        gaussian_bandwidth(z, "scott", n=32 * 10_000), gaussian_bandwidth(z, "scott") / 2
    )


def test_bad_rule_and_kernel_are_named():
    with pytest.raises(ValueError, match="'median'"):
        gaussian_bandwidth(torch.randn(10, 2), "median")
    with pytest.raises(ValueError, match="'box'"):
        kde_bandwidth(torch.randn(10, 2), "scott", "box")
    assert math.isfinite(float(gaussian_bandwidth(torch.randn(2, 1), "silverman")))
