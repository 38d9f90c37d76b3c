"""The prototype remedies measured by bench/robustness.py (all off by default)."""

from __future__ import annotations

import pytest
import torch

from saelab.lit.base import clip_token_norms
from saelab.lit.families import JumpReLULit, JumpReLUTrainConfig, TopKTrainConfig


def _jumprelu(**kw) -> JumpReLULit:
    return JumpReLULit(d_in=16, d_sae=64, target_l0=4, dead_tokens_window=100, **kw)


@pytest.mark.parametrize("mode", ["threshold", "bias"])
def test_dead_reinit_makes_a_dead_latent_fire_at_the_target_rate(mode):
    lit = _jumprelu(dead_reinit=mode)
    x = torch.randn(2048, 16)
    with torch.no_grad():
        lit.sae.log_threshold[:8] = torch.log(torch.tensor(1e3))  # above every pre-activation
    lit.tokens_since_fired[:8] = 100  # silent for the whole dead window: dead
    before = lit.sae.log_threshold.detach().clone()
    fires = lambda: (lit.sae.pre_acts(x) > lit.sae.threshold).float().mean(0)  # noqa: E731
    assert fires()[:8].max() == 0
    lit.reinit_dead(x)
    rate = fires()
    # Each dead latent now fires on target_l0 / d_sae = 1/16 of the batch; the rest are untouched.
    torch.testing.assert_close(rate[:8], torch.full((8,), 4 / 64), atol=1 / 2048, rtol=0)
    torch.testing.assert_close(lit.sae.log_threshold[8:], before[8:])


def test_dead_reinit_bias_revives_a_latent_whose_preactivations_are_all_negative():
    x = torch.randn(2048, 16)
    lit = _jumprelu(dead_reinit="bias")
    with torch.no_grad():
        lit.sae.b_enc[:8] = -100.0  # every pre-activation far below zero
        lit.sae.log_threshold[8:] = torch.log(torch.tensor(0.3))  # the live latents' threshold
    lit.tokens_since_fired[:8] = 100
    lit.reinit_dead(x)
    theta = lit.sae.threshold.detach()
    rate = (lit.sae.pre_acts(x) > theta).float().mean(0)
    torch.testing.assert_close(rate[:8], torch.full((8,), 4 / 64), atol=1 / 2048, rtol=0)
    torch.testing.assert_close(theta[:8], torch.full((8,), 0.3))  # a live latent's threshold
    # 'threshold' alone cannot revive it: the quantile is negative, floored at 1e-6.
    lit = _jumprelu(dead_reinit="threshold")
    with torch.no_grad():
        lit.sae.b_enc[:8] = -100.0
    lit.tokens_since_fired[:8] = 100
    lit.reinit_dead(x)
    assert (lit.sae.pre_acts(x) > lit.sae.threshold)[:, :8].sum() == 0


def test_dead_reinit_leaves_live_latents_alone():
    lit = _jumprelu(dead_reinit="bias")
    before = [p.detach().clone() for p in lit.sae.parameters()]
    lit.reinit_dead(torch.randn(256, 16))  # nothing is dead yet
    for p, b in zip(lit.sae.parameters(), before):
        torch.testing.assert_close(p, b, rtol=0, atol=0)


def test_token_norm_clip_scales_only_the_massive_rows():
    x = torch.randn(101, 8)
    x[0] *= 1000.0
    clipped = clip_token_norms(x, 3.0)
    median = x.norm(dim=1).median()
    assert clipped[0].norm().item() == pytest.approx(3.0 * median.item(), rel=1e-5)
    torch.testing.assert_close(
        torch.nn.functional.cosine_similarity(clipped[0], x[0], dim=0), torch.tensor(1.0)
    )
    small = x.norm(dim=1) <= 3.0 * median
    torch.testing.assert_close(clipped[small], x[small], rtol=0, atol=0)


@pytest.mark.parametrize("value", [0.0, -1.0])
def test_token_norm_clip_must_be_positive(value):
    with pytest.raises(ValueError, match="token_norm_clip"):
        TopKTrainConfig(d_in=16, d_sae=64, token_norm_clip=value)
    with pytest.raises(ValueError, match="token_norm_clip"):
        JumpReLUTrainConfig(d_in=16, d_sae=64, token_norm_clip=value)


def test_b_dec_init_geometric_median_centres_the_decoder_bias():
    x = torch.randn(4096, 16) + 3.0  # data offset from the origin
    lit = _jumprelu(b_dec_init="geometric_median")
    lit.init_from_data(x)
    torch.testing.assert_close(lit.sae.b_dec, torch.full((16,), 3.0), atol=0.1, rtol=0)
    plain = _jumprelu()
    plain.init_from_data(x)
    assert plain.sae.b_dec.abs().max() == 0  # the default keeps zeros
