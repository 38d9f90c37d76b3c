"""Fused elementwise parts of the training step: JumpReLU with its two straight-through
estimators, ReLU with its penalty's column sums, and the Gated activation.

Why: between the two large matrix products an SAE step runs a handful of elementwise ops on
[B, d_sae] tensors. Run eagerly, each op is a full pass over memory that allocates a fresh
full-size temporary, and on a CPU a fresh 128 MiB tensor also pays its page faults, which cost
about as much as the arithmetic. Here each Function runs its maths block by block over rows,
with temporaries the size of one block (they stay in cache), and writes only the tensors the
maths needs: the activations f (the decoder's input, which its gradient needs) and dL/dz.
Where z is private to the SAE's forward, dL/dz is written into z's own buffer once the
backward has read it (autograd's version counter turns any later use of z, e.g. a second
backward with ``retain_graph``, into an error rather than a silent wrong answer).

Every Function here is checked against the plain out-of-place maths in tests/sae/test_fused.py.
On a GPU one block spans the whole batch: there kernel launches, not cache misses, are the cost.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .kernels import KERNELS_INPLACE

BLOCK_ELEMENTS = 1 << 17
"""Elements per block on a CPU (512 KiB of float32): a few temporaries of this size stay in
cache, and a block is big enough that Python's per-op overhead is noise. On the benchmark CPU
(1 MiB L2 per core) 2^16..2^19 are within 10% of each other; 2^13 is 2x slower."""


def _blocks(rows: int, cols: int, device: torch.device) -> Iterator[slice]:
    step = rows if device.type != "cpu" else max(1, BLOCK_ELEMENTS // max(cols, 1))
    for start in range(0, rows, step):
        yield slice(start, min(rows, start + step))


def _scratch(rows: int, cols: int, like: Tensor, n: int) -> list[Tensor]:
    """``n`` block buffers in the compute dtype of ``like``, reused by every block of one call."""
    step = rows if like.device.type != "cpu" else max(1, min(rows, BLOCK_ELEMENTS // max(cols, 1)))
    return [
        torch.empty(step, cols, device=like.device, dtype=compute_dtype(like)) for _ in range(n)
    ]


def compute_dtype(t: Tensor) -> torch.dtype:
    """float32, or float64 for float64 inputs: under bf16 autocast z arrives in bf16, and the
    block maths (thresholds, kernel windows, sums) runs in float32 on block-sized copies."""
    return torch.promote_types(t.dtype, torch.float32)


def _as_rows(t: Tensor) -> Tensor:
    return t.reshape(-1, t.shape[-1])


# --- JumpReLU (docs/maths.md §1) ------------------------------------------------------------------------
class JumpReLUWithL0(torch.autograd.Function):
    """(f, l0) = (z * H(z - theta), mean_b sum_i H(z_bi - theta_i)) with the paper's pseudo-
    derivatives (eqs. 11-12), in one pass forward and one backward:

        dL/dz       = dL/df * H(z - theta)                  (L0 sends nothing to the encoder)
        dL/dtheta_i = -(1/eps_i) sum_b K((z_bi - theta_i)/eps_i) (theta_i dL/df_bi + dL/dl0 / B)

    ``bandwidth`` eps is a float or a per-latent tensor [d_sae]. The plain reference is
    ``JumpReLUFunction`` + ``StepFunction`` in jumprelu.py. With ``overwrite_z`` the backward
    writes dL/dz into z's buffer (only for a z nobody else reads after the backward).
    """

    @staticmethod
    def forward(
        ctx,
        z: Tensor,
        threshold: Tensor,
        bandwidth: float | Tensor,
        kernel: str,
        overwrite_z: bool = False,
    ):
        z2 = _as_rows(z)
        rows, cols = z2.shape
        cd = compute_dtype(z)
        theta = threshold.detach().to(cd)
        f = torch.empty_like(z2)
        fired = torch.zeros(cols, device=z.device, dtype=cd)
        (mask,) = _scratch(rows, cols, z, 1)
        for r in _blocks(rows, cols, z.device):
            zc = z2[r].to(cd)  # a view for float32 z; a block-sized copy under bf16 autocast
            m = torch.gt(zc, theta, out=mask[: zc.shape[0]])
            fired += m.sum(0)
            torch.mul(m, zc, out=f[r])
        bw = bandwidth if isinstance(bandwidth, Tensor) else None
        ctx.save_for_backward(z, threshold, bw)
        ctx.bandwidth, ctx.kernel, ctx.overwrite_z = bandwidth, kernel, overwrite_z
        return f.view(z.shape), fired.sum() / rows

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_f: Tensor | None, grad_l0: Tensor | None):
        z, threshold, bw = ctx.saved_tensors
        z2 = _as_rows(z)
        rows, cols = z2.shape
        cd = compute_dtype(z)
        theta = threshold.detach().to(cd)
        inv_eps = bw.detach().to(cd).reciprocal() if bw is not None else 1.0 / ctx.bandwidth
        kernel = KERNELS_INPLACE[ctx.kernel]
        c = grad_l0.to(cd) / rows if grad_l0 is not None else None
        want_z = ctx.needs_input_grad[0] and grad_f is not None
        want_theta = ctx.needs_input_grad[1] and (grad_f is not None or c is not None)
        g2 = _as_rows(grad_f) if grad_f is not None else None
        grad_z = (z2 if ctx.overwrite_z else torch.empty_like(z2)) if want_z else None
        acc = torch.zeros(cols, device=z2.device, dtype=cd) if want_theta else None
        u_buf, w_buf = _scratch(rows, cols, z2, 2)
        for r in _blocks(rows, cols, z2.device):
            zc = z2[r].to(cd)
            n = zc.shape[0]
            gc = g2[r].to(cd) if g2 is not None else None
            if want_theta:
                K = kernel(torch.sub(zc, theta, out=u_buf[:n]).mul_(inv_eps))
                if gc is not None:
                    w = torch.mul(gc, theta, out=w_buf[:n])
                    if c is not None:
                        w.add_(c)
                    acc += K.mul_(w).sum(0)
                else:
                    acc += K.sum(0) * c
            if want_z:
                # zc may be a view of grad_z[r]: read it (the mask) before writing the block.
                torch.mul(torch.gt(zc, theta, out=u_buf[:n]), gc, out=grad_z[r])
        grad_theta = (
            acc.mul_(-inv_eps).sum_to_size(threshold.shape).to(threshold.dtype)
            if want_theta
            else None
        )
        return (grad_z.view(z.shape) if want_z else None), grad_theta, None, None, None


def jumprelu_with_l0(
    z: Tensor,
    threshold: Tensor,
    bandwidth: float | Tensor,
    kernel: str = "rectangle",
    overwrite_z: bool = False,
) -> tuple[Tensor, Tensor]:
    """(f, l0) for JumpReLU; see :class:`JumpReLUWithL0`."""
    return JumpReLUWithL0.apply(z, threshold, bandwidth, kernel, overwrite_z)


# --- ReLU (docs/maths.md §4) ----------------------------------------------------------------------------
class ReLUWithColumnSums(torch.autograd.Function):
    """f = ReLU(z), computed in z's own buffer, with column sums s_i = sum_b f_bi (the L1 penalty
    is s . ||W_dec||_2 / B, so it needs no [B, d_sae] temporary) and the count of nonzeros."""

    @staticmethod
    def forward(ctx, z: Tensor):
        z2 = _as_rows(z)
        rows, cols = z2.shape
        cd = compute_dtype(z)
        sums = torch.zeros(cols, device=z.device, dtype=cd)
        fired = torch.zeros(cols, device=z.device, dtype=cd)
        (mask,) = _scratch(rows, cols, z, 1)
        for r in _blocks(rows, cols, z.device):
            fc = z2[r].clamp_min_(0)
            sums += fc.sum(0, dtype=cd)
            fired += torch.gt(fc, 0, out=mask[: fc.shape[0]]).sum(0)
        ctx.mark_dirty(z)
        fired = fired.sum()
        ctx.mark_non_differentiable(fired)
        ctx.save_for_backward(z)
        return z, sums, fired

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_f: Tensor | None, grad_sums: Tensor | None, _):
        (f,) = ctx.saved_tensors
        f2 = _as_rows(f)
        rows, cols = f2.shape
        grad_z = torch.empty_like(f2)
        g2 = _as_rows(grad_f) if grad_f is not None else None
        (buf,) = _scratch(rows, cols, f, 1)
        for r in _blocks(rows, cols, f.device):
            n = r.stop - r.start
            if g2 is None:
                g = buf[:n].copy_(grad_sums.expand(n, cols))
            elif grad_sums is None:
                g = g2[r]
            else:
                g = torch.add(g2[r], grad_sums, out=buf[:n])
            torch.mul(torch.gt(f2[r], 0, out=grad_z[r]), g, out=grad_z[r])
        return grad_z.view(f.shape)


# --- Gated (docs/maths.md §2) ---------------------------------------------------------------------------
class GatedActivation(torch.autograd.Function):
    """From z = x~ @ W_gate (the shared product), with pi_gate = z + b_gate and
    pi_mag = z * s + b_mag (s = exp(r_mag)):

        f         = H(pi_gate) * ReLU(pi_mag)     the features (decoded with W_dec)
        gate_acts = ReLU(pi_gate)                 written into z's buffer (z is not needed again)
        gate_sums = sum_b gate_acts               the L1 term is its sum (or its dot with the
                                                  decoder norms, RI-L1) over B: no temporary
        fired     = count of nonzero f            for the L0 metric

    The backward needs only f and gate_acts: where dL/dpi_mag is nonzero, pi_mag = f, so
    dL/ds = sum_b dL/dpi_mag * (f - b_mag) / s, and z is never kept.
    """

    @staticmethod
    def forward(ctx, z: Tensor, b_gate: Tensor, s: Tensor, b_mag: Tensor):
        z2 = _as_rows(z)
        rows, cols = z2.shape
        f = torch.empty_like(z)
        f2 = _as_rows(f)
        cd = compute_dtype(z)
        sums = torch.zeros(cols, device=z.device, dtype=cd)
        fired = torch.zeros(cols, device=z.device, dtype=cd)
        mag, gate_mask = _scratch(rows, cols, z, 2)
        bg, sf, bm = b_gate.detach(), s.detach(), b_mag.detach()
        for r in _blocks(rows, cols, z.device):
            zc = z2[r].to(cd)  # a view for float32 z: its block becomes ReLU(pi_gate) in place
            n = zc.shape[0]
            pm = torch.mul(zc, sf, out=mag[:n]).add_(bm).clamp_min_(0)
            g = zc.add_(bg).clamp_min_(0)
            if z2.dtype != cd:  # bf16 autocast: gate maths in float32, stored in z's dtype
                z2[r].copy_(g)
            sums += g.sum(0)
            torch.mul(pm, torch.gt(g, 0, out=gate_mask[:n]), out=f2[r])
            fired += torch.gt(f2[r], 0, out=gate_mask[:n]).sum(0)
        ctx.mark_dirty(z)
        fired = fired.sum()
        ctx.mark_non_differentiable(fired)
        ctx.save_for_backward(f, z, s, b_mag)
        return f, z, sums, fired

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_f, grad_gate, grad_sums, _):
        f, gate, s, b_mag = ctx.saved_tensors
        f2, gate2 = _as_rows(f), _as_rows(gate)
        rows, cols = f2.shape
        cd = compute_dtype(f)
        sf, bm = s.detach().to(cd), b_mag.detach().to(cd)
        gf = _as_rows(grad_f) if grad_f is not None else None
        gg = _as_rows(grad_gate) if grad_gate is not None else None
        grad_b_gate, grad_s, grad_b_mag = (
            torch.zeros(cols, device=f2.device, dtype=cd) for _ in range(3)
        )
        grad_z = gate2  # gate_acts is private to the forward: its buffer takes dL/dz
        d_mag, d_gate, tmp = _scratch(rows, cols, f2, 3)
        for r in _blocks(rows, cols, f2.device):
            n = r.stop - r.start
            fc, gc = f2[r].to(cd), gate2[r].to(cd)
            gpm = torch.gt(fc, 0, out=d_mag[:n])
            if gf is not None:
                gpm.mul_(gf[r])
            else:
                gpm.zero_()
            grad_b_mag += gpm.sum(0)
            grad_s += torch.sub(fc, bm, out=tmp[:n]).mul_(gpm).sum(0)
            gpg = torch.gt(gc, 0, out=d_gate[:n])
            if gg is not None and grad_sums is not None:
                gpg.mul_(torch.add(gg[r], grad_sums, out=tmp[:n]))
            elif gg is not None:
                gpg.mul_(gg[r])
            elif grad_sums is not None:
                gpg.mul_(grad_sums)
            else:
                gpg.zero_()
            grad_b_gate += gpg.sum(0)
            torch.addcmul(gpg, gpm, sf, out=grad_z[r])
        grad_s /= sf
        return grad_z.view(gate.shape), grad_b_gate, grad_s.to(s.dtype), grad_b_mag
