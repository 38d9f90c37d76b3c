"""JumpReLU with bandwidth_rule: eps is the rule's estimate on the training batch, it is what the
STE uses, it moves only in training, and it is training state (checkpointed, not exported)."""

from __future__ import annotations

import pytest
import torch

from saelab.io import save_sae
from saelab.sae import load_sae
from saelab.sae.bandwidth import kde_bandwidth
from saelab.sae.kernels import KERNELS
from tests.conftest import make_training, train_loss


def _sae(**kw):
    kw = {"target_l0": None, "threshold_warmup_fraction": 0, "aux_coefficient": 0, **kw}
    return make_training(
        "jumprelu", d_in=8, d_sae=32, threshold_init=0.2, bandwidth_rule="silverman", **kw
    )


def test_first_training_step_sets_eps_to_the_rule_on_that_batch():
    sae, objective = _sae(kernel="triangle")
    x = torch.randn(256, 8)
    expected = kde_bandwidth(sae.pre_acts(x).detach(), "silverman", "triangle", n=256)
    train_loss(sae, objective, x)
    assert torch.allclose(objective.bandwidth, expected)
    assert objective.bandwidth.std() > 0  # per latent, not one number


def test_updates_follow_the_interval_with_an_ema_and_not_in_eval():
    sae, objective = _sae(bandwidth_update_every=2)
    train_loss(sae, objective, torch.randn(256, 8))
    first = objective.bandwidth.clone()
    train_loss(sae, objective, 3 * torch.randn(256, 8))  # step 1: not an update step
    assert torch.equal(objective.bandwidth, first)
    x = 3 * torch.randn(256, 8)
    estimate = kde_bandwidth(sae.pre_acts(x).detach(), "silverman", "rectangle", n=256)
    train_loss(sae, objective, x)  # step 2: eps <- 0.9 eps + 0.1 estimate
    assert torch.allclose(objective.bandwidth, 0.9 * first + 0.1 * estimate)
    before = objective.bandwidth.clone()
    objective.eval()
    train_loss(sae, objective, 10 * torch.randn(256, 8))
    assert torch.equal(objective.bandwidth, before)


def test_the_threshold_gradient_uses_the_per_latent_eps():
    torch.manual_seed(1)
    sae, objective = _sae(l0_coefficient=1.0)
    x = torch.randn(512, 8)
    train_loss(sae, objective, x)  # set eps
    eps = objective.bandwidth.clone()
    objective.cfg.bandwidth_update_every = 10**9  # freeze eps for the checked step
    sae.zero_grad()
    out = train_loss(sae, objective, x)
    out.losses["l0"].backward()
    # dL0/dtheta_i = -(1/B) sum_b (1/eps_i) K((z_bi - theta_i)/eps_i); chain rule through exp
    z, theta = sae.pre_acts(x).detach(), sae.threshold.detach()
    expected = -(KERNELS["rectangle"]((z - theta) / eps) / eps).mean(0) * theta
    assert torch.allclose(sae.log_threshold.grad, expected, atol=1e-6)


def test_eps_is_training_state_not_exported(tmp_path):
    sae, objective = _sae()
    train_loss(sae, objective, torch.randn(256, 8))
    assert "bandwidth_estimate" in objective.state_dict()  # checkpointed with the trainer
    assert not any("bandwidth" in key for key in sae.state_dict())
    folder = save_sae(sae, tmp_path / "sae")
    from safetensors.torch import load_file

    assert "bandwidth_estimate" not in load_file(str(folder / "sae_weights.safetensors"))
    loaded = load_sae(folder)
    x = torch.randn(64, 8)
    assert torch.equal(loaded.encode(x), sae.encode(x))


def test_bad_rule_is_named():
    with pytest.raises(ValueError, match="bandwidth_rule"):
        make_training("jumprelu", d_in=8, d_sae=32, bandwidth_rule="median")
