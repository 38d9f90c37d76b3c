"""The sparse path (saelab.sae.sparse, auxk_loss_sparse) computes what the dense maths does:
selections, decodes, encoder gradients and AuxK, outputs and gradients, on fresh random inputs."""

from __future__ import annotations

import pytest
import torch

from saelab.sae.auxk import auxk_loss, auxk_loss_sparse
from saelab.sae.sparse import above, decode_selected, encode_selected, topk_batch, topk_rows

D64 = torch.float64


def _close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def _flat_set(sel, m):
    return set((sel.rows * m + sel.cols).tolist())


def test_topk_rows_is_the_per_row_topk():
    z = torch.randn(40, 30, dtype=D64)
    sel = topk_rows(z, 5)
    ref = torch.zeros_like(z).scatter(1, z.topk(5, dim=1).indices, z.topk(5, dim=1).values)
    _close(sel.dense(sel.values, z.shape), ref)
    assert torch.equal(sel.offsets, torch.arange(0, 200, 5))


@pytest.mark.parametrize(
    "case",
    ["normal", "one loud row", "even rows loud", "few positives", "everything", "shifted rows"],
)
def test_topk_batch_is_the_flat_topk(case):
    z = torch.randn(300, 40, dtype=D64)
    n_keep = 3 * 300
    if case == "one loud row":  # the sampled rows miss it: the estimate is too high
        z[7] += 50
    elif case == "even rows loud":  # the evenly spaced sample sees only loud rows: too high a bound
        z[::2] += 10
    elif case == "few positives":
        z = -z.abs()
        z[:5, :3] = 1.0 + torch.rand(5, 3, dtype=D64)
    elif case == "everything":
        n_keep = z.numel()
    elif case == "shifted rows":  # rows far from exchangeable
        z += torch.linspace(-3, 3, 300, dtype=D64)[:, None]
    sel = topk_batch(z, n_keep)
    ref = z.reshape(-1).topk(n_keep).indices
    assert _flat_set(sel, 40) == set(ref.tolist())
    assert len(sel.rows) == n_keep
    flat = sel.rows * 40 + sel.cols
    assert torch.all(flat[1:] > flat[:-1]), "entries are in row order"
    _close(sel.values, z.reshape(-1)[flat])
    counts = torch.bincount(sel.rows, minlength=300)
    assert torch.equal(sel.offsets, torch.cumsum(counts, 0) - counts)


def test_above_selects_entries_over_a_per_latent_threshold():
    z = torch.randn(20, 8, dtype=D64)
    theta = torch.rand(8, dtype=D64)
    sel = above(z, theta)
    _close(sel.dense(sel.values, z.shape), z * (z > theta))


def _selection_and_dense(n=30, d=6, m=20, k=4):
    x = torch.randn(n, d, dtype=D64, requires_grad=True)
    W = torch.randn(d, m, dtype=D64, requires_grad=True)
    b = torch.randn(m, dtype=D64, requires_grad=True)
    with torch.no_grad():
        sel = topk_rows(x @ W + b, k)
    return x, W, b, sel


def test_encoder_gradient_matches_dense():
    x, W, b, sel = _selection_and_dense()
    g = torch.randn(len(sel.values), dtype=D64)
    got = torch.autograd.grad((encode_selected(sel, x, W, b) * g).sum(), (x, W, b))
    z = x @ W + b
    ref = torch.autograd.grad((z[sel.rows, sel.cols] * g).sum(), (x, W, b))
    _close(encode_selected(sel, x, W, b), z[sel.rows, sel.cols])
    for a, r in zip(got, ref):
        _close(a, r)


def test_decode_matches_dense():
    _, _, _, sel = _selection_and_dense()
    W_dec = torch.randn(20, 6, dtype=D64, requires_grad=True)
    w = torch.rand(len(sel.values), dtype=D64, requires_grad=True)
    g = torch.randn(30, 6, dtype=D64)
    out = decode_selected(sel, w, W_dec)
    got = torch.autograd.grad((out * g).sum(), (w, W_dec))
    dense = sel.dense(w, (30, 20))
    ref_out = dense @ W_dec
    ref = torch.autograd.grad((ref_out * g).sum(), (w, W_dec))
    _close(out, ref_out)
    for a, r in zip(got, ref):
        _close(a, r)


@pytest.mark.parametrize("n_dead", [0, 3, 12, 20])
def test_auxk_sparse_matches_dense(n_dead):
    """aux_k = 8: fewer dead than aux_k, more, all; and none (then the loss is 0)."""
    n, d, m = 30, 6, 20
    x = torch.randn(n, d, dtype=D64)
    W_enc = torch.randn(d, m, dtype=D64, requires_grad=True)
    bias = torch.randn(m, dtype=D64, requires_grad=True)
    W_dec = torch.randn(m, d, dtype=D64, requires_grad=True)
    x_hat = torch.randn(n, d, dtype=D64)
    dead = torch.zeros(m, dtype=torch.bool)
    dead[torch.randperm(m)[:n_dead]] = True
    z = x @ W_enc + bias
    ref = auxk_loss(x, x_hat, z, dead, W_dec, 8)
    got = auxk_loss_sparse(x, x_hat, z.detach(), dead, W_enc, bias, W_dec, 8)
    _close(got, ref)
    if n_dead == 0:
        assert got == 0
        return
    params = (W_enc, bias, W_dec)
    for a, r in zip(torch.autograd.grad(got, params), torch.autograd.grad(ref, params)):
        _close(a, r)


@pytest.mark.parametrize("kernel", ["rectangle", "triangle", "epanechnikov"])
@pytest.mark.parametrize("per_latent_bandwidth", [False, True])
def test_selected_jumprelu_matches_the_dense_fused_function(kernel, per_latent_bandwidth):
    """On the entries above theta - eps * half-width (the kernel's reach), the sparse JumpReLU
    gives the dense one's f, L0 and pseudo-gradients; outside them both are zero."""
    from saelab.sae.fused import jumprelu_with_l0
    from saelab.sae.kernels import KERNEL_SUPPORT
    from saelab.sae.sparse import SelectedJumpReLU

    z = torch.randn(40, 12, dtype=D64) * 0.5 + 0.3
    theta = (torch.rand(12, dtype=D64) * 0.4 + 0.2).requires_grad_()
    eps = torch.rand(12, dtype=D64) * 0.4 + 0.1 if per_latent_bandwidth else 0.3
    g_f, g_l0 = torch.randn(40, 12, dtype=D64), torch.randn((), dtype=D64)
    f, l0 = jumprelu_with_l0(z.clone().requires_grad_(), theta, eps, kernel)
    ref_gt = torch.autograd.grad((f * g_f).sum() + g_l0 * l0, theta)[0]

    sel = above(z, theta.detach() - torch.as_tensor(eps) * KERNEL_SUPPORT[kernel] * 1.01)
    assert len(sel.values) < z.numel(), "the window must leave some entries out"
    values = sel.values.clone().requires_grad_()
    w, l0_s = SelectedJumpReLU.apply(values, theta, eps, kernel, sel.cols, 40)
    gv, gt = torch.autograd.grad((w * g_f[sel.rows, sel.cols]).sum() + g_l0 * l0_s, (values, theta))
    _close(sel.dense(w.detach(), z.shape), f.detach())
    _close(l0_s, l0)
    _close(gt, ref_gt)
    _close(gv, (g_f * (z > theta.detach()))[sel.rows, sel.cols])


def test_a_subset_of_a_selection_decodes_as_the_selection_with_the_rest_weighted_zero():
    z = torch.randn(6, 20, dtype=torch.float64)
    sel = topk_rows(z, 5)
    W_dec = torch.randn(20, 4, dtype=torch.float64)
    keep = (sel.cols < 8) & (sel.rows != 2)  # row 2 keeps nothing: an empty bag, zeros
    part = sel.subset(keep)
    assert torch.equal(part.cols, sel.cols[keep]) and torch.equal(part.rows, sel.rows[keep])
    got = decode_selected(part, sel.values[keep], W_dec)
    torch.testing.assert_close(got, decode_selected(sel, sel.values * keep, W_dec))
    assert torch.equal(got[2], torch.zeros(4, dtype=torch.float64))
    none = sel.subset(torch.zeros_like(keep))  # nothing left: every row an empty bag
    assert torch.equal(none.offsets, torch.zeros(6, dtype=none.offsets.dtype))
    assert not decode_selected(none, sel.values[:0], W_dec).any()
