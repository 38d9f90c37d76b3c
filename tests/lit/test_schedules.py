from __future__ import annotations

import pytest

from saelab.lit.schedules import effective_warmup, lr_factor, sparsity_factor


def test_warmups_scale_down_for_short_runs():
    assert effective_warmup(10_000, 1_000_000, 0.2) == 10_000
    assert effective_warmup(10_000, 2_000, 0.2) == 400
    assert effective_warmup(None, 2_000, 0.05) == 100


def test_lr_cosine_warmup_then_constant_then_linear_decay():
    total, warm = 1000, 100
    f = lambda s: lr_factor(s, total, warm, 0.1, 0.2)  # noqa: E731
    assert f(0) == pytest.approx(0.1)
    assert f(50) == pytest.approx(0.55)
    assert f(100) == 1.0 and f(500) == 1.0 and f(799) == 1.0
    assert f(900) == pytest.approx(0.5)
    assert f(1000) == 0.0
    assert all(f(s) <= f(s + 1) for s in range(99))


def test_sparsity_linear_warmup():
    assert sparsity_factor(0, 100) == 0.0
    assert sparsity_factor(25, 100) == 0.25
    assert sparsity_factor(1000, 100) == 1.0
    assert sparsity_factor(0, 0) == 1.0
