"""Invariants every SAE family must satisfy, checked with one parametrised test per property."""

from __future__ import annotations

import pytest
import torch

from saelab.sae.batchtopk import update_threshold
from saelab.sae.objective import Step
from tests.conftest import (
    FAMILIES,
    make_sae,
    make_training,
    set_inference_threshold,
    train_loss,
)


@pytest.mark.parametrize("arch", FAMILIES)
def test_shapes_and_gradients(arch):
    sae, objective = make_training(arch)
    x = torch.randn(32, 16)
    out = train_loss(sae, objective, x, dead_mask=torch.zeros(64, dtype=torch.bool))
    assert out.x_hat.shape == (32, 16) and out.feature_acts.shape == (32, 64)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    out.loss.backward()
    for name, p in sae.named_parameters():
        assert p.grad is not None, f"{arch}: no gradient reached {name}"
    assert sae.W_enc.grad.abs().sum() > 0 and sae.W_dec.grad.abs().sum() > 0


@pytest.mark.parametrize("arch", FAMILIES)
def test_init(arch):
    sae = make_sae(arch)
    assert sae.W_enc.shape == (16, 64) and sae.W_dec.shape == (64, 16)
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(64))
    torch.testing.assert_close(sae.W_enc, sae.W_dec.T)
    assert sae.W_enc.data_ptr() != sae.W_dec.data_ptr(), "encoder must be a copy, not tied"
    assert torch.all(sae.b_dec == 0) and torch.all(sae.b_enc == 0)


@pytest.mark.parametrize("arch", FAMILIES)
def test_encode_decode_match_forward(arch):
    sae = make_sae(arch).eval()
    x = torch.randn(32, 16) * 3
    set_inference_threshold(sae, 0.5)
    out = sae(x)
    f = sae.encode(x)
    torch.testing.assert_close(f, out.feature_acts)
    torch.testing.assert_close(sae.decode(f), out.x_hat)
    assert torch.all(f >= 0), "feature activations are non-negative in every family"


@pytest.mark.parametrize("arch", FAMILIES)
def test_reconstruction_loss_is_summed_over_dims(arch):
    sae, objective = make_training(arch)
    x = torch.randn(8, 16)
    out = train_loss(sae, objective, x)
    expected = ((x - out.x_hat) ** 2).sum(1).mean()
    torch.testing.assert_close(out.losses["mse"], expected)


@pytest.mark.parametrize("arch", ["jumprelu", "gated", "relu"])
def test_sparsity_scale_weights_only_the_penalty(arch):
    # A fixed lambda: the target-L0 controller would move between the two calls.
    knobs = {"target_l0": None, "threshold_warmup_fraction": 0} if arch == "jumprelu" else {}
    sae, objective = make_training(arch, **knobs)
    x = torch.randn(8, 16) * 3
    full = train_loss(sae, objective, x, sparsity_scale=1.0)
    half = train_loss(sae, objective, x, sparsity_scale=0.5)
    penalty = {"jumprelu": "l0", "gated": "l1", "relu": "l1"}[arch]
    assert full.losses[penalty] > 0
    torch.testing.assert_close(half.losses[penalty], 0.5 * full.losses[penalty])
    torch.testing.assert_close(half.losses["mse"], full.losses["mse"])


def test_topk_keeps_exactly_k_largest():
    sae = make_sae("topk", k=5)
    x = torch.randn(20, 16)
    f = sae.encode(x)
    z = sae.pre_acts(x)
    assert torch.all((f != 0).sum(1) <= 5)
    kth = z.topk(5, dim=1).values[:, -1:]
    kept = f != 0
    assert torch.all(z[kept] >= kth.expand_as(z)[kept])
    torch.testing.assert_close(f[kept], z[kept])


def test_batchtopk_selects_k_times_batch_and_tracks_threshold():
    sae, objective = make_training("batchtopk", k=3)
    x = torch.randn(10, 16) * 3
    out = train_loss(sae, objective, x)
    assert int((out.feature_acts != 0).sum()) == 3 * 10
    smallest = out.feature_acts[out.feature_acts > 0].min()
    torch.testing.assert_close(out.metrics["min_selected_act"], smallest)
    objective.after_step(sae, out, Step(index=0))
    torch.testing.assert_close(sae.threshold, smallest)  # first value is taken as is
    update_threshold(sae, smallest + 1, ema=0.999, n=1000000)
    torch.testing.assert_close(sae.threshold, smallest + (1 - 0.999))  # late on, a plain EMA
    sae.eval()
    z = sae.pre_acts(x)
    torch.testing.assert_close(sae.encode(x), z * (z > sae.threshold))


def test_batchtopk_threshold_is_the_bias_corrected_ema():
    """The threshold after n updates is the EMA-weighted mean of all n batch values, with the
    first batch weighted like any other: a high value from the untrained SAE fades away
    instead of carrying ema^(n-1) of the weight."""
    sae, _ = make_training("batchtopk", k=3)
    ema = 0.9
    values = torch.cat([torch.tensor([5.0]), torch.full((29,), 1.0)])
    for n, v in enumerate(values, start=1):
        update_threshold(sae, v, ema=ema, n=n)
    weights = ema ** torch.arange(len(values) - 1, -1, -1, dtype=torch.float)
    expected = (weights * values).sum() / weights.sum()
    torch.testing.assert_close(sae.threshold, expected)
    assert sae.threshold < 1.05  # a plain EMA from the first value: 1 + 4 * 0.9^29 = 1.19


@pytest.mark.parametrize(
    "arch, extra",
    [("topk", {"k": 2}), ("batchtopk", {"k": 2}), ("jumprelu", {"aux_coefficient": 1 / 32})],
)
def test_auxk_engages_only_when_latents_are_dead(arch, extra):
    from saelab.sae.auxk import auxk_loss

    sae, objective = make_training(arch, aux_k=8, **extra)
    x = torch.randn(32, 16)
    none_dead = train_loss(sae, objective, x, dead_mask=torch.zeros(64, dtype=torch.bool))
    assert none_dead.losses["auxk"] == 0
    dead = torch.zeros(64, dtype=torch.bool)
    dead[:4] = True
    some_dead = train_loss(sae, objective, x, dead_mask=dead)
    assert some_dead.losses["auxk"] > 0
    some_dead.losses["auxk"].backward()
    grad_rows = sae.W_enc.grad.abs().sum(0) != 0
    assert grad_rows[:4].any() and not grad_rows[4:].any(), "AuxK must train only dead latents"
    # scale min(n_dead / aux_k, 1): 4 dead of aux_k=8 halves the loss relative to its raw value
    raw = auxk_loss(x, some_dead.x_hat, sae.pre_acts(x), dead, sae.W_dec, 8) / 0.5
    e = (x - some_dead.x_hat).detach()
    z = sae.pre_acts(x).detach().masked_fill(~dead, float("-inf"))
    v, i = z.topk(8, dim=1)
    f_aux = torch.zeros_like(z).scatter(1, i, torch.relu(v))
    expected = ((e - f_aux @ sae.W_dec.detach()) ** 2).sum() / ((e - e.mean(0)) ** 2).sum()
    torch.testing.assert_close(raw, expected)
    torch.testing.assert_close(
        some_dead.losses["auxk"], objective.cfg.aux_coefficient * 0.5 * expected
    )


def test_jumprelu_auxk_is_off_with_a_zero_coefficient():
    sae, objective = make_training("jumprelu", aux_coefficient=0.0)
    dead = torch.ones(64, dtype=torch.bool)
    assert "auxk" not in train_loss(sae, objective, torch.randn(8, 16), dead_mask=dead).losses


def test_gated_aux_term_does_not_train_the_decoder():
    sae, objective = make_training("gated")
    x = torch.randn(16, 16) * 3
    train_loss(sae, objective, x).losses["aux"].backward()
    assert sae.W_dec.grad is None or torch.all(sae.W_dec.grad == 0)
    assert sae.W_enc.grad.abs().sum() > 0


def test_gated_ri_l1_penalty_is_weighted_by_decoder_norms():
    sae, objective = make_training("gated", variant="ri_l1", l1_coefficient=1.0)
    assert not objective.unit_norm_decoder
    x = torch.randn(16, 16) * 3
    before = train_loss(sae, objective, x).losses["l1"]
    with torch.no_grad():
        sae.W_dec.mul_(2.0)
    torch.testing.assert_close(train_loss(sae, objective, x).losses["l1"], 2 * before)


def test_relu_penalty_uses_decoder_norms_and_no_constraint():
    sae, objective = make_training("relu", l1_coefficient=1.0)
    assert not objective.unit_norm_decoder
    x = torch.randn(16, 16) * 3
    f = sae.encode(x)
    expected = (f * sae.W_dec.norm(dim=1)).sum(1).mean()
    torch.testing.assert_close(train_loss(sae, objective, x).losses["l1"], expected)


def test_geometric_median_resists_outliers():
    from saelab.sae.topk import geometric_median

    points = torch.randn(200, 3) * 0.1 + torch.tensor([1.0, 2.0, 3.0])
    points[:20] = 1000.0  # 10% far outliers drag the mean but not the median
    median = geometric_median(points)
    assert (median - torch.tensor([1.0, 2.0, 3.0])).norm() < 0.1
    assert (points.mean(0) - torch.tensor([1.0, 2.0, 3.0])).norm() > 50


@pytest.mark.parametrize(
    "arch, bad, message",
    [
        ("topk", {"k": 100}, "k=100"),
        ("jumprelu", {"l0_coefficient": -1.0}, "l0_coefficient"),
        ("jumprelu", {"kernel": "box"}, "'rectangle'"),
        ("gated", {"variant": "plain"}, "ri_l1"),
        ("relu", {"l1_coefficient": -0.1}, "l1_coefficient"),
    ],
)
def test_config_errors_name_key_and_allowed_values(arch, bad, message):
    with pytest.raises(ValueError, match=message):
        make_training(arch, **bad)


def test_unknown_architecture():
    from saelab.sae import build_sae

    with pytest.raises(ValueError, match="known: .*jumprelu"):
        build_sae("sparse", d_in=4)


def test_batchtopk_exports_as_an_equivalent_jumprelu():
    from saelab.sae import JumpReLUSAE

    sae = make_sae("batchtopk", k=3)
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(0.1 * torch.randn_like(p))
    with pytest.raises(ValueError, match="no positive inference threshold"):
        sae.to_jumprelu()
    sae.threshold.fill_(0.3)
    sae.eval()
    jump = sae.to_jumprelu().eval()
    assert isinstance(jump, JumpReLUSAE)
    x = torch.randn(50, 16) * 3
    f = sae.encode(x)
    assert (f != 0).any() and (f == 0).any()
    torch.testing.assert_close(jump.encode(x), f, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(jump.decode(jump.encode(x)), sae.decode(f), rtol=1e-5, atol=1e-5)
