"""The sparse path of the training step, for steps with few active latents per token (TopK,
BatchTopK and AuxK always; JumpReLU, ReLU and Gated once their L0 is low): the selected (row,
latent) pairs are decoded with ``F.embedding_bag`` and the encoder's gradient is a sparse
product, so only the encoder's forward product is dense.

Why: with k latents per token out of d_sae, a dense step spends four of its five large matrix
products (decode forward, its two gradients, the encoder's weight gradient) multiplying zeros.
Gathering k decoder rows per token costs B*k*d_in instead of B*d_sae*d_in: at k = 32,
d_sae = 8192 that is 256 times less arithmetic (measured: docs/speed.md).

The values are the same as the dense path's (tests/sae/test_sparse.py compares outputs and
gradients); only the order of floating-point sums differs. The families take this path where it
was measured to win (``use_sparse``): on a CPU, below a density of active latents. On a GPU the
dense products run on tensor cores and the sparse kernels were not measured against them, so
GPUs keep the dense path.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from .fused import compute_dtype
from .kernels import KERNELS

SPARSE_MAX_DENSITY = 0.04
"""Largest fraction of active latents (L0 / d_sae) for which a family takes the sparse path:
below it the sparse step was measured faster than the dense one for every family on a CPU
(the crossing points are in docs/speed.md)."""


def use_sparse(device: torch.device, density: float | None) -> bool:
    """Whether a step with this fraction of active latents runs sparse (None: unknown yet)."""
    return device.type == "cpu" and density is not None and density <= SPARSE_MAX_DENSITY


class Selection(NamedTuple):
    """Selected entries of a [rows, d_sae] pre-activation matrix, grouped by row in row order:
    ``rows``/``cols`` [nnz], ``offsets`` [rows] (start of each row's entries), ``values`` [nnz]."""

    rows: Tensor
    cols: Tensor
    offsets: Tensor
    values: Tensor

    def dense(self, weights: Tensor, shape: tuple[int, int]) -> Tensor:
        """The [rows, d_sae] matrix with ``weights`` at the selected entries, zeros elsewhere
        (differentiable with respect to ``weights``)."""
        flat = torch.zeros(shape[0] * shape[1], dtype=weights.dtype, device=weights.device)
        return flat.scatter_(0, self.rows * shape[1] + self.cols, weights).view(
            shape
        )  # in place: one [B, d_sae]

    def subset(self, keep: Tensor) -> Selection:
        """The entries where ``keep`` [nnz] is set, still grouped by row in row order (the
        same rows: a row with none left is an empty bag)."""
        rows = self.rows[keep]
        counts = torch.bincount(rows, minlength=self.offsets.shape[0])
        return Selection(rows, self.cols[keep], torch.cumsum(counts, 0) - counts, self.values[keep])


def _from_flat(flat: Tensor, z: Tensor) -> Selection:
    """A Selection from ascending flat indices into z."""
    n, m = z.shape
    rows, cols = flat // m, flat % m
    counts = torch.bincount(rows, minlength=n)
    offsets = torch.cumsum(counts, 0) - counts
    return Selection(rows, cols, offsets, z.view(-1)[flat])


def topk_rows(z: Tensor, k: int) -> Selection:
    """The k largest entries of each row (torch.topk: a partial selection, no full sort)."""
    n = z.shape[0]
    values, cols = z.topk(k, dim=-1, sorted=False)
    arange = torch.arange(n, device=z.device)
    return Selection(arange.repeat_interleave(k), cols.reshape(-1), arange * k, values.reshape(-1))


def where(z: Tensor, mask: Tensor) -> Selection:
    """Every entry of z where the same-shaped boolean mask is set."""
    return _from_flat(torch.nonzero(mask.view(-1)).squeeze(1), z)


def above(z: Tensor, threshold: Tensor | float) -> Selection:
    """Every entry with z > threshold (a scalar or per-latent [d_sae] tensor)."""
    return where(z, z > threshold)


def topk_batch(z: Tensor, n_keep: int, sample_rows: int = 64, margin: float = 0.25) -> Selection:
    """The ``n_keep`` largest entries of the whole matrix (BatchTopK), exactly.

    A flat ``torch.topk`` over B*d_sae entries with k = B*k_token is slow on a CPU (0.9 s at
    4096 x 8192). Instead: estimate from a few evenly spaced rows a value that more than
    ``n_keep`` entries exceed (the ``1 + margin`` quantile of the sample), keep the entries
    above it in one pass, and run the exact top-k on those candidates. If the estimate left
    fewer than ``n_keep`` candidates (rows far from exchangeable), fall back to the flat top-k.
    """
    n, m = z.shape
    total = n * m
    if n_keep >= total:
        return _from_flat(torch.arange(total, device=z.device), z)
    step = max(1, n // sample_rows)
    sample = z[::step].reshape(-1)
    want = min(sample.numel(), math.ceil(n_keep * sample.numel() / total * (1 + margin)) + 16)
    bound = sample.topk(want, sorted=False).values.min()
    flat = torch.nonzero((z >= bound).view(-1)).squeeze(1)
    if flat.numel() < n_keep:
        flat = z.reshape(-1).topk(n_keep, sorted=False).indices
    elif flat.numel() > n_keep:
        flat = flat[z.view(-1)[flat].topk(n_keep, sorted=False).indices]
    return _from_flat(flat.sort().values, z)


class SparseEncoderGrad(torch.autograd.Function):
    """``values`` are entries (rows, cols) of z = x @ W_enc + bias, computed WITHOUT autograd
    (the selection needs the whole z, the gradient only the selected entries). Returns them
    unchanged, and sends back exactly what the dense path would, but at O(nnz * d_in) cost:
    dL/dW_enc = x^T G, dL/dbias = column sums of G, dL/dx = G W_enc^T, with G the sparse
    [B, d_sae] matrix of dL/dvalues."""

    @staticmethod
    def forward(
        ctx, values: Tensor, x: Tensor, W_enc: Tensor, bias: Tensor, rows: Tensor, cols: Tensor
    ):
        ctx.save_for_backward(x, W_enc, rows, cols)
        ctx.bias_shape = bias.shape
        return values.detach().clone()

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, W_enc, rows, cols = ctx.saved_tensors
        n, m = x.shape[0], W_enc.shape[1]
        grad = grad.to(W_enc.dtype)
        grad_x = grad_W = grad_bias = None
        if ctx.needs_input_grad[2]:
            # x^T G as (G^T x)^T: torch.sparse.mm wants the sparse operand first.
            g_t = torch.sparse_coo_tensor(
                torch.stack([cols, rows]), grad, (m, n), check_invariants=False
            )
            grad_W = torch.sparse.mm(g_t, x.to(W_enc.dtype)).t()
        if ctx.needs_input_grad[3]:
            grad_bias = torch.zeros(m, dtype=grad.dtype, device=grad.device).index_add_(
                0, cols, grad
            )
            grad_bias = grad_bias.sum_to_size(ctx.bias_shape)
        if ctx.needs_input_grad[1]:
            g = torch.sparse_coo_tensor(
                torch.stack([rows, cols]), grad, (n, m), check_invariants=False
            )
            grad_x = torch.sparse.mm(g, W_enc.t().contiguous()).to(x.dtype)
        return None, grad_x, grad_W, grad_bias, None, None


def encode_selected(sel: Selection, x: Tensor, W_enc: Tensor, bias: Tensor) -> Tensor:
    """The selected pre-activations, differentiable with respect to x, W_enc and bias."""
    return SparseEncoderGrad.apply(sel.values, x, W_enc, bias, sel.rows, sel.cols)


def decode_selected(sel: Selection, weights: Tensor, W_dec: Tensor) -> Tensor:
    """sum over a row's selected latents i of weights * W_dec[i] (no bias): [rows, d_in].
    ``embedding_bag`` gathers and sums the rows without materialising them, and its backward
    gives the dense dL/dW_dec and dL/dweights (the per-entry dot products)."""
    return F.embedding_bag(
        sel.cols, W_dec, sel.offsets, mode="sum", per_sample_weights=weights.to(W_dec.dtype)
    )


class SelectedJumpReLU(torch.autograd.Function):
    """JumpReLU and its L0 term on selected pre-activations ``values`` [nnz] of latents ``cols``,
    where the selection holds every entry inside the STE kernel's window (z > theta - eps * half
    width): (f, l0) = (z H(z - theta), count of z > theta / n_rows), with the pseudo-derivatives
    of ``fused.JumpReLUWithL0`` (entries outside the selection have K = 0 and dL/dz = 0 there)."""

    @staticmethod
    def forward(
        ctx,
        values: Tensor,
        threshold: Tensor,
        bandwidth: float | Tensor,
        kernel: str,
        cols: Tensor,
        n_rows: int,
    ):
        cd = compute_dtype(values)
        v, theta = values.to(cd), threshold.detach().to(cd)[cols]
        active = v > theta
        bw = bandwidth if isinstance(bandwidth, Tensor) else None
        ctx.save_for_backward(values, threshold, bw, cols)
        ctx.bandwidth, ctx.kernel, ctx.n_rows = bandwidth, kernel, n_rows
        return (v * active).to(values.dtype), active.sum().to(cd) / n_rows

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_f: Tensor | None, grad_l0: Tensor | None):
        values, threshold, bw, cols = ctx.saved_tensors
        cd = compute_dtype(values)
        v, theta = values.to(cd), threshold.detach().to(cd)[cols]
        inv_eps = bw.detach().to(cd).reciprocal()[cols] if bw is not None else 1.0 / ctx.bandwidth
        K = KERNELS[ctx.kernel]((v - theta) * inv_eps)
        w = torch.zeros_like(v) if grad_f is None else theta * grad_f.to(cd)
        if grad_l0 is not None:
            w = w + grad_l0.to(cd) / ctx.n_rows
        grad_theta = torch.zeros(threshold.shape[-1], dtype=cd, device=v.device)
        grad_theta.index_add_(0, cols, -inv_eps * K * w)
        grad_values = None if grad_f is None else (grad_f.to(cd) * (v > theta)).to(values.dtype)
        return (
            grad_values,
            grad_theta.sum_to_size(threshold.shape).to(threshold.dtype),
            None,
            None,
            None,
            None,
        )
