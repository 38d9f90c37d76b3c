"""Kernels K for the JumpReLU straight-through estimators (JumpReLU paper, eqs. 11-12 and
appendix). Each integrates to 1 over the real line, so ``(1/eps) K(u/eps)`` is a density and the
batch mean of the pseudo-gradients is a kernel density estimate of the expected-loss gradient."""

from __future__ import annotations

import math
from collections.abc import Callable

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


# The same kernels evaluated IN PLACE on a float buffer ``u`` the caller owns (the fused STE
# backward in ``fused.py`` runs them on cache-sized blocks; each out-of-place op above would
# allocate another block). Comparisons write 0/1 floats into ``u`` itself: float masks are
# several times faster on CPU than bool tensors in the ops that follow.
def _rectangle_(u: Tensor) -> Tensor:
    return torch.lt(u.abs_(), 0.5, out=u)


def _triangle_(u: Tensor) -> Tensor:
    return u.abs_().neg_().add_(1).clamp_min_(0)


def _gaussian_(u: Tensor) -> Tensor:
    return u.square_().mul_(-0.5).exp_().mul_(1 / math.sqrt(2 * math.pi))


def _epanechnikov_(u: Tensor) -> Tensor:
    return u.square_().neg_().add_(1).clamp_min_(0).mul_(0.75)


KERNELS_INPLACE: dict[str, Callable[[Tensor], Tensor]] = {
    "rectangle": _rectangle_,
    "triangle": _triangle_,
    "gaussian": _gaussian_,
    "epanechnikov": _epanechnikov_,
}

# Half-width of each kernel's support in units of u (inf: unbounded), for the sparse path,
# which must see every pre-activation inside the window.
KERNEL_SUPPORT: dict[str, float] = {
    "rectangle": 0.5,
    "triangle": 1.0,
    "gaussian": math.inf,
    "epanechnikov": 1.0,
}
