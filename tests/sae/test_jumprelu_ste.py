"""JumpReLU's straight-through estimators against the paper's formulas (eqs. 11-12) and against
a finite difference of the EXPECTED loss, which the batch-mean pseudo-gradient estimates."""

from __future__ import annotations

import math

import pytest
import torch

from saelab.sae.jumprelu import JumpReLUFunction, StepFunction
from tests.conftest import make_training, train_loss

# Written out independently of saelab.sae.kernels, so a wrong kernel there fails here.
REFERENCE_KERNELS = {
    "rectangle": lambda u: (u.abs() < 0.5).double(),
    "triangle": lambda u: torch.clamp(1 - u.abs(), min=0),
    "gaussian": lambda u: torch.exp(-(u**2) / 2) / math.sqrt(2 * math.pi),
    "epanechnikov": lambda u: 0.75 * torch.clamp(1 - u**2, min=0),
}
KERNEL_NAMES = sorted(REFERENCE_KERNELS)


@pytest.mark.parametrize("kernel", KERNEL_NAMES)
def test_kernels_integrate_to_one(kernel):
    from saelab.sae.kernels import KERNELS

    u = torch.linspace(-8, 8, 400_001, dtype=torch.float64)
    assert abs(torch.trapezoid(KERNELS[kernel](u), u).item() - 1) < 1e-4


@pytest.mark.parametrize("kernel", KERNEL_NAMES)
def test_pseudo_gradients_match_formulas(kernel):
    eps = 0.4
    z = (torch.randn(64, 8, dtype=torch.float64) * 0.5 + 0.5).requires_grad_()
    theta = (torch.rand(8, dtype=torch.float64) * 0.5 + 0.3).requires_grad_()
    g = torch.randn(64, 8, dtype=torch.float64)
    K = REFERENCE_KERNELS[kernel]((z.detach() - theta.detach()) / eps)
    above = (z.detach() > theta.detach()).double()

    f = JumpReLUFunction.apply(z, theta, eps, kernel)
    torch.testing.assert_close(f, z.detach() * above)
    gz, gt = torch.autograd.grad(f, (z, theta), g)
    torch.testing.assert_close(gz, g * above)
    torch.testing.assert_close(gt, (g * -(theta.detach() / eps) * K).sum(0))
    assert gt.abs().sum() > 0, "the test window must catch some pre-activations"

    h = StepFunction.apply(z, theta, eps, kernel)
    torch.testing.assert_close(h, above)
    gz, gt = torch.autograd.grad(h, (z, theta), g, allow_unused=True)
    assert gz is None or torch.all(gz == 0), "L0 must send no gradient into the encoder"
    torch.testing.assert_close(gt, (g * -(1 / eps) * K).sum(0))


class _OneLatent:
    """d_in = d_sae = 1 with identity weights: z = x and x_hat = JumpReLU(x); calling it runs the
    training loss."""

    def __init__(self, theta: float, lam: float, eps: float, kernel: str, **kw):
        kw = {"target_l0": None, "threshold_warmup_fraction": 0, "aux_coefficient": 0, **kw}
        sae, objective = make_training(
            "jumprelu", d_in=1, d_sae=1, l0_coefficient=lam, bandwidth=eps, kernel=kernel,
            threshold_init=theta, **kw,
        )  # fmt: skip
        self.sae, self.objective = sae.double(), objective.double()
        with torch.no_grad():
            self.sae.W_enc.fill_(1.0)
            self.sae.W_dec.fill_(1.0)

    def __call__(self, x):
        return train_loss(self.sae, self.objective, x)

    def __getattr__(self, name):
        return getattr(self.sae, name)


def _one_latent_sae(theta: float, lam: float, eps: float, kernel: str, **kw) -> _OneLatent:
    return _OneLatent(theta, lam, eps, kernel, **kw)


def _expected_loss(theta: float, lam: float, mu: float, sigma: float) -> float:
    """E[(x - JumpReLU_theta(x))^2] + lam P(x > theta), x ~ N(mu, sigma^2), by quadrature:
    the loss is x^2 below theta (the latent is off) and 0 above it."""
    x = torch.linspace(mu - 12 * sigma, mu + 12 * sigma, 2_000_001, dtype=torch.float64)
    p = torch.exp(-((x - mu) ** 2) / (2 * sigma**2)) / (sigma * math.sqrt(2 * math.pi))
    below = x <= theta
    return torch.trapezoid(x**2 * p * below, x).item() + lam * torch.trapezoid(p * ~below, x).item()


@pytest.mark.parametrize("kernel", KERNEL_NAMES)
def test_batch_mean_threshold_gradient_estimates_expected_loss_gradient(kernel):
    theta, lam, mu, sigma, eps = 1.5, 0.3, 0.5, 1.0, 0.05
    h = 1e-3
    fd = (_expected_loss(theta + h, lam, mu, sigma) - _expected_loss(theta - h, lam, mu, sigma)) / (
        2 * h
    )
    sae = _one_latent_sae(theta, lam, eps, kernel)
    x = (
        torch.randn(2_000_000, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        * sigma
        + mu
    )
    sae(x).loss.backward()
    # autodiff through theta = exp(t): dL/dt = theta * dL/dtheta
    estimate = sae.log_threshold.grad.item() / theta
    assert fd > 0.1, "the chosen point must have a clearly non-zero gradient"
    assert estimate == pytest.approx(fd, rel=0.05)


def test_direct_threshold_gradient_differs_by_theta():
    theta = 0.8
    x = torch.randn(4096, 1, dtype=torch.float64) + 0.5
    grads = {}
    for mode in ("autodiff", "direct"):
        sae = _one_latent_sae(theta, 0.2, 0.1, "rectangle", threshold_grad=mode)
        sae(x).loss.backward()
        grads[mode] = sae.log_threshold.grad.item()
        theta = sae.log_threshold.exp().item()  # 0.8 up to the float32 it was created in
    assert grads["direct"] != 0
    assert grads["autodiff"] == pytest.approx(theta * grads["direct"], rel=1e-9)


def test_quadratic_target_l0_pulls_from_both_sides():
    x = torch.randn(4096, 1, dtype=torch.float64) + 0.5
    for target, sign in ((0.1, -1), (0.95, 1)):  # L0 here is ~0.5 (P(x > 0.5))
        sae = _one_latent_sae(
            0.5,
            0.0,  # the fixed penalty's lambda plays no part
            0.2,
            "rectangle",
            target_l0=target,
            target_l0_method="quadratic",
            quadratic_coefficient=1.0,
        )
        out = sae(x)
        out.losses["l0"].backward()
        # Too dense: raise theta (negative gradient). Too sparse: lower theta.
        assert math.copysign(1, sae.log_threshold.grad.item()) == sign
        expected = (out.metrics["l0"] / target - 1) ** 2
        torch.testing.assert_close(out.losses["l0"], expected)


def test_dual_target_l0_multiplier_is_a_pi_controller():
    x = torch.randn(4096, 1, dtype=torch.float64) + 0.5
    sae = _one_latent_sae(
        0.5, 0.2, 0.2, "rectangle", target_l0=0.1, target_l0_lr=0.05, target_l0_kp=0.3
    )
    out = sae(x)
    l0 = out.metrics["l0"].item()  # ~0.5: five times the target
    error = l0 / 0.1 - 1
    # lambda = lambda_I + kp * e on this batch, with lambda_I starting at 0 (the fixed
    # penalty's l0_coefficient = 0.2 plays no part)...
    assert out.losses["l0"].item() == pytest.approx(0.3 * error * l0, rel=1e-6)
    # ... then lambda_I += lr * e.
    assert sae.objective.l0_integral.item() == pytest.approx(0.05 * error, rel=1e-6)
    out.losses["l0"].backward()
    assert sae.log_threshold.grad.item() < 0, "a positive multiplier raises theta"
    l0_2 = sae(x).metrics["l0"].item()
    state = sae.objective
    assert state.l0_integral.item() == pytest.approx(0.05 * (error + l0_2 / 0.1 - 1), rel=1e-6)
    before = (state.l0_integral.item(), state.l0_multiplier.item())
    state.eval()
    out = sae(x)
    assert (state.l0_integral.item(), state.l0_multiplier.item()) == before, (
        "evaluation moves nothing"
    )
    torch.testing.assert_close(out.losses["l0"].item(), before[1] * out.metrics["l0"].item())


def _train_threshold(method: str, target: float, steps: int = 1500) -> float:
    """Adam on theta alone for the one-latent SAE (x_hat = JumpReLU(x)) on x ~ N(0.5, 1): the
    reconstruction always wants theta lower (every firing is exact), so only the L0 term can
    hold L0 down at the target. Returns L0 on fresh draws."""
    torch.manual_seed(0)
    sae = _one_latent_sae(
        0.5, 0.5, 0.1, "rectangle", target_l0=target, target_l0_method=method, target_l0_lr=0.02
    )
    opt = torch.optim.Adam([sae.sae.log_threshold], lr=0.01)
    for _ in range(steps):
        opt.zero_grad()
        sae(torch.randn(1024, 1, dtype=torch.float64) + 0.5).loss.backward()
        opt.step()
    return (
        (sae.encode(torch.randn(200_000, 1, dtype=torch.float64) + 0.5) != 0).double().mean().item()
    )


def test_dual_target_reaches_the_requested_l0_where_the_quadratic_penalty_settles_short():
    target = 0.2  # L0 of one latent = its firing rate
    assert _train_threshold("dual", target) == pytest.approx(target, rel=0.05)
    assert _train_threshold("quadratic", target) > 1.2 * target


def test_quantile_threshold_init_gives_the_requested_starting_l0():
    sae, objective = make_training("jumprelu", d_in=16, d_sae=64, threshold_init_l0=6)
    sample = torch.randn(8000, 16) * 2 + 0.5
    objective.init_from_data(sae, sample)
    fresh = torch.randn(20_000, 16) * 2 + 0.5  # new draws from the same distribution
    l0 = (sae.encode(fresh) != 0).sum(1).float().mean().item()
    assert l0 == pytest.approx(6, rel=0.05)
    density = (sae.encode(fresh) != 0).float().mean(0)
    assert density.min() > 0.5 * 6 / 64 and density.max() < 1.5 * 6 / 64, (
        "each latent fires equally often"
    )
    assert torch.all(sae.threshold > 0)
