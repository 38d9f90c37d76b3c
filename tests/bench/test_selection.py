"""bench/selection.py reads each SAE the way its family does, and the rate-matched thresholds
fire as often as the ranking they copy."""

from __future__ import annotations

import pytest
import torch

from bench.selection import fvu, read_jumprelu, read_topk
from saelab.sae.jumprelu import JumpReLUConfig, JumpReLUSAE
from saelab.sae.topk import TopKConfig, TopKSAE

K = 4


def _x() -> torch.Tensor:
    return torch.randn(4000, 16, generator=torch.Generator().manual_seed(0))


def test_the_own_rules_are_the_families_forward():
    torch.manual_seed(0)
    x = _x()
    jumprelu = JumpReLUSAE(JumpReLUConfig(d_in=16, d_sae=64))
    with torch.no_grad():
        jumprelu.log_threshold.fill_(0.0)  # theta = 1
    topk = TopKSAE(TopKConfig(d_in=16, d_sae=64, k=K))
    j, t = read_jumprelu(jumprelu, x, K), read_topk(topk, x, K)
    half = x[2000:]
    with torch.no_grad():
        assert j["JumpReLU, own thresholds"] == pytest.approx(fvu(x, jumprelu(x).x_hat), rel=1e-5)
        assert t["TopK, own ranking"] == pytest.approx(fvu(half, topk(half).x_hat), rel=1e-5)
    # A random dictionary: any rule reads it badly, but the readout is an FVU, not a constant.
    assert 0 < j["JumpReLU, TopK's ranking"] != j["JumpReLU, own thresholds"]


def test_rate_matched_thresholds_fire_as_often_as_the_ranking():
    torch.manual_seed(0)
    t = read_topk(TopKSAE(TopKConfig(d_in=16, d_sae=64, k=K)), _x(), K)
    assert t["TopK thresholds L0"] == pytest.approx(K, rel=0.1)
    assert t["TopK, per-latent thresholds"] != t["TopK, own ranking"]
