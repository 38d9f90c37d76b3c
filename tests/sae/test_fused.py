"""The fused elementwise Functions (saelab.sae.fused) compute the same function as the plain
maths, outputs and gradients, on fresh random inputs: each against a reference written out here
op by op, over several blocks (the block size is shrunk so a small test crosses block edges)."""

from __future__ import annotations

import pytest
import torch

from saelab.sae import fused
from saelab.sae.fused import GatedActivation, ReLUWithColumnSums, jumprelu_with_l0
from tests.sae.test_jumprelu_ste import KERNEL_NAMES, REFERENCE_KERNELS


@pytest.fixture(autouse=True, params=["one block", "many blocks"])
def _blocks(request, monkeypatch):
    if request.param == "many blocks":  # 3 rows of 24 latents per block; 50 rows end mid-block
        monkeypatch.setattr(fused, "BLOCK_ELEMENTS", 3 * 24)


def _close(a, b, **kw):
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, **kw)


def _reference_jumprelu(z, theta, eps, kernel, g_f, g_l0):
    """Outputs and the paper's pseudo-gradients (eqs. 11-12), written out directly."""
    above = (z > theta).double()
    K = REFERENCE_KERNELS[kernel]((z - theta) / eps)
    grad_z = g_f * above
    grad_theta = (-(theta / eps) * K * g_f).sum(0) + (-(1 / eps) * K * g_l0 / z.shape[0]).sum(0)
    return z * above, above.sum(1).mean(), grad_z, grad_theta


@pytest.mark.parametrize("kernel", KERNEL_NAMES)
@pytest.mark.parametrize("per_latent_bandwidth", [False, True])
def test_jumprelu_matches_reference(kernel, per_latent_bandwidth):
    z = (torch.randn(50, 24, dtype=torch.float64) * 0.5 + 0.4).requires_grad_()
    theta = (torch.rand(24, dtype=torch.float64) * 0.5 + 0.2).requires_grad_()
    eps = torch.rand(24, dtype=torch.float64) * 0.4 + 0.1 if per_latent_bandwidth else 0.3
    g_f, g_l0 = torch.randn(50, 24, dtype=torch.float64), torch.randn((), dtype=torch.float64)

    f, l0 = jumprelu_with_l0(z * 1, theta, eps, kernel)
    grad_z, grad_theta = torch.autograd.grad((f * g_f).sum() + g_l0 * l0, (z, theta))
    ref_f, ref_l0, ref_gz, ref_gt = _reference_jumprelu(
        z.detach(), theta.detach(), eps, kernel, g_f, g_l0
    )
    _close(f, ref_f)
    _close(l0, ref_l0)
    _close(grad_z, ref_gz)
    _close(grad_theta, ref_gt)
    assert ref_gt.abs().sum() > 0 and 0 < ref_l0 < 24, "the test must exercise both branches"


def test_jumprelu_l0_alone_and_f_alone():
    """Each output's gradient on its own (the other's gradient is None in the backward)."""
    z = (torch.randn(50, 24, dtype=torch.float64) + 0.3).requires_grad_()
    theta = torch.full((24,), 0.3, dtype=torch.float64, requires_grad=True)
    f, l0 = jumprelu_with_l0(z * 1, theta, 0.5, "triangle")
    gz, gt = torch.autograd.grad(l0, (z, theta), allow_unused=True)
    assert gz is None or torch.all(gz == 0), "L0 sends no gradient into the encoder"
    _close(
        gt,
        _reference_jumprelu(
            z.detach(),
            theta.detach(),
            0.5,
            "triangle",
            torch.zeros(50, 24, dtype=torch.float64),
            torch.tensor(1.0, dtype=torch.float64),
        )[3],
    )
    g_f = torch.randn(50, 24, dtype=torch.float64)
    f, l0 = jumprelu_with_l0(z * 1, theta, 0.5, "triangle")
    gz, gt = torch.autograd.grad((f * g_f).sum(), (z, theta))
    ref = _reference_jumprelu(
        z.detach(), theta.detach(), 0.5, "triangle", g_f, torch.tensor(0.0, dtype=torch.float64)
    )
    _close(gz, ref[2])
    _close(gt, ref[3])


def test_jumprelu_overwrite_z_gives_the_same_gradients_and_reuses_the_buffer():
    z0 = torch.randn(50, 24, dtype=torch.float64, requires_grad=True)
    theta = torch.full((24,), 0.2, dtype=torch.float64, requires_grad=True)
    g_f = torch.randn(50, 24, dtype=torch.float64)
    grads = {}
    for overwrite in (False, True):
        z = z0 * 1
        f, l0 = jumprelu_with_l0(z, theta, 0.3, "rectangle", overwrite_z=overwrite)
        ((f * g_f).sum() + l0).backward(inputs=[z0, theta])
        grads[overwrite] = (z0.grad.clone(), theta.grad.clone())
        z0.grad = theta.grad = None
        if overwrite:  # z's buffer now holds dL/dz
            _close(z.detach(), grads[True][0])
    _close(grads[True][0], grads[False][0])
    _close(grads[True][1], grads[False][1])


def test_jumprelu_keeps_leading_dims():
    z = torch.randn(2, 25, 24, dtype=torch.float64, requires_grad=True)
    theta = torch.full((24,), 0.2, dtype=torch.float64, requires_grad=True)
    f, l0 = jumprelu_with_l0(z * 1, theta, 0.3, "gaussian")
    flat_f, flat_l0 = jumprelu_with_l0(z.detach().reshape(50, 24), theta.detach(), 0.3, "gaussian")
    _close(f.reshape(50, 24), flat_f)
    _close(l0, flat_l0)
    f.sum().backward()
    assert z.grad.shape == z.shape


def test_relu_with_column_sums_matches_reference():
    z0 = torch.randn(50, 24, dtype=torch.float64, requires_grad=True)
    g_f, g_s = torch.randn(50, 24, dtype=torch.float64), torch.randn(24, dtype=torch.float64)
    f, sums, fired = ReLUWithColumnSums.apply(z0 * 1)
    got = torch.autograd.grad((f * g_f).sum() + (sums * g_s).sum(), z0)[0]
    ref_f = torch.relu(z0)
    ref = torch.autograd.grad((ref_f * g_f).sum() + (ref_f.sum(0) * g_s).sum(), z0)[0]
    _close(f, ref_f)
    _close(sums, ref_f.sum(0))
    assert fired == (ref_f > 0).sum()
    _close(got, ref)


def _reference_gated(z, b_gate, r_mag, b_mag):
    pi_gate, pi_mag = z + b_gate, z * r_mag.exp() + b_mag
    gate = torch.relu(pi_gate)
    return (pi_gate > 0).double() * torch.relu(pi_mag), gate, gate.sum(0)


def test_gated_activation_matches_reference():
    leaves = [
        torch.randn(50, 24, dtype=torch.float64),
        torch.randn(24, dtype=torch.float64) * 0.3,
        torch.randn(24, dtype=torch.float64) * 0.3,
        torch.randn(24, dtype=torch.float64) * 0.3,
    ]
    z0, b_gate, r_mag, b_mag = (t.requires_grad_() for t in leaves)
    g = [
        torch.randn(50, 24, dtype=torch.float64),
        torch.randn(50, 24, dtype=torch.float64),
        torch.randn(24, dtype=torch.float64),
    ]

    def loss(outs):
        return sum((o * gi).sum() for o, gi in zip(outs, g))

    f, gate, sums, fired = GatedActivation.apply(z0 * 1, b_gate, r_mag.exp(), b_mag)
    ref_outs = _reference_gated(z0, b_gate, r_mag, b_mag)
    for a, b in zip((f, gate, sums), ref_outs):
        _close(a, b)
    assert fired == (ref_outs[0] > 0).sum()
    assert 0 < fired < f.numel()
    # (after the backward, gate's buffer holds dL/dz: gate_acts is private to the SAE's forward)
    got = torch.autograd.grad(loss((f, gate, sums)), (z0, b_gate, r_mag, b_mag))
    ref = torch.autograd.grad(loss(ref_outs), (z0, b_gate, r_mag, b_mag))
    for a, b in zip(got, ref):
        _close(a, b)
