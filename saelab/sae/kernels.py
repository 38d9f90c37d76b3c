"""Kernels K for the JumpReLU straight-through estimators (JumpReLU paper, eqs. 11-12 and
appendix). Each integrates to 1 over the real line, so ``(1/eps) K(u/eps)`` is a density and the
batch mean of the pseudo-gradients is a kernel density estimate of the expected-loss gradient."""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor


def rectangle(u: Tensor) -> Tensor:
    """K(u) = 1[-1/2 < u < 1/2] (the paper's default)."""
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


def triangle(u: Tensor) -> Tensor:
    """K(u) = max(0, 1 - |u|)."""
    return (1 - u.abs()).clamp_min(0)


def gaussian(u: Tensor) -> Tensor:
    """K(u) = exp(-u^2/2) / sqrt(2 pi)."""
    return torch.exp(-0.5 * u * u) / math.sqrt(2 * math.pi)


def epanechnikov(u: Tensor) -> Tensor:
    """K(u) = 3/4 max(0, 1 - u^2)."""
    return 0.75 * (1 - u * u).clamp_min(0)


KERNELS: dict[str, Callable[[Tensor], Tensor]] = {
    "rectangle": rectangle,
    "triangle": triangle,
    "gaussian": gaussian,
    "epanechnikov": epanechnikov,
}
