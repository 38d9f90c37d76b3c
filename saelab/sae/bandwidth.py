"""Data-driven bandwidths for the JumpReLU straight-through estimators (docs/maths.md §8.5).

Why a KDE rule applies. The STE's threshold gradient, averaged over a batch of n tokens, is
-(1/n) sum_b (1/eps) K((z_b - theta)/eps): a kernel density estimate of p_i(theta_i), the
density of latent i's pre-activation z_i at its threshold (the paper's eqs. 11-12 and its
section 4: dE[L0]/dtheta = -p(theta)). eps plays the role of the KDE bandwidth h, and the
paper leaves its choice open, suggesting the KDE literature. This module applies two classic
rules of thumb per latent to the batch's pre-activations:

    Scott (1992):      h_G = 1.06 * sigma * n^(-1/5)
    Silverman (1986):  h_G = 0.9 * min(sigma, IQR / 1.349) * n^(-1/5)

Both give the AMISE-optimal bandwidth for a GAUSSIAN kernel when the data are (close to)
normal; the robust min(sigma, IQR/1.349) keeps Silverman's from over-smoothing heavy-tailed or
bimodal z (a latent's z is a bulk near or below zero plus a tail of firings). A bandwidth for
another kernel K follows by the canonical-bandwidth rescaling (Marron & Nolan 1988):
h_K = h_G * delta_K / delta_G, with delta_K = (R(K) / mu_2(K)^2)^(1/5), R(K) = int K^2 and
mu_2(K) = int u^2 K, for the kernels exactly as parametrised in kernels.py:

    kernel        R(K)             mu_2(K)   delta_K
    gaussian      1/(2 sqrt(pi))   1         0.7764
    rectangle     1                1/12      2.7019   (support |u| < 1/2: width eps)
    triangle      2/3              1/6       1.8882
    epanechnikov  3/5              1/5       1.7188

So for the paper's rectangle kernel eps = 3.48 h_G. n is the batch size: the rule sizes the
window for the estimator that one optimiser step actually uses.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

CANONICAL_BANDWIDTH = {
    "gaussian": (1 / (2 * math.sqrt(math.pi))) ** 0.2,
    "rectangle": 144**0.2,
    "triangle": 24**0.2,
    "epanechnikov": 15**0.2,
}
RULES = ("silverman", "scott")


def gaussian_bandwidth(z: Tensor, rule: str, n: int | None = None) -> Tensor:
    """Per-column ([..., M] -> [M]) Gaussian-kernel bandwidth by ``rule`` from samples z [N, M];
    ``n`` (default N) is the sample count the density estimate will use."""
    if rule not in RULES:
        raise ValueError(f"bandwidth rule {rule!r} is unknown: use one of {RULES}")
    z = z.reshape(-1, z.shape[-1]).float()
    n = z.shape[0] if n is None else n
    if z.shape[0] < 2:
        raise ValueError("a bandwidth rule needs at least 2 samples per latent")
    sigma = z.std(0)
    if rule == "scott":
        return 1.06 * sigma * n**-0.2
    # kthvalue, not torch.quantile: the latter refuses inputs over 2^24 elements ([4096, 4096]).
    rows = z.shape[0]
    q25 = z.kthvalue(max(1, round(0.25 * rows)), dim=0).values
    q75 = z.kthvalue(max(1, round(0.75 * rows)), dim=0).values
    spread = torch.minimum(sigma, (q75 - q25) / 1.349)
    # A latent whose z has a zero IQR (e.g. mostly identical) falls back to sigma.
    spread = torch.where(spread > 0, spread, sigma)
    return 0.9 * spread * n**-0.2


def kde_bandwidth(z: Tensor, rule: str, kernel: str, n: int | None = None) -> Tensor:
    """The rule's bandwidth converted to ``kernel`` (see the module docstring), per latent."""
    if kernel not in CANONICAL_BANDWIDTH:
        raise ValueError(
            f"no canonical bandwidth for kernel {kernel!r}: use one of {tuple(CANONICAL_BANDWIDTH)}"
        )
    ratio = CANONICAL_BANDWIDTH[kernel] / CANONICAL_BANDWIDTH["gaussian"]
    return gaussian_bandwidth(z, rule, n) * ratio
