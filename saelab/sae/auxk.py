"""The AuxK auxiliary loss (Gao et al. 2024, appendix A.2), shared by TopK, BatchTopK and, as an
option for small token budgets, JumpReLU.

Dead latents get no gradient from the reconstruction loss, so they stay dead. AuxK asks the
top ``aux_k`` dead latents (by pre-activation) to reconstruct the detached residual
e = x - x_hat, decoded without b_dec; the gradient pulls their encoder and decoder rows towards
what the live latents miss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .sparse import Selection, decode_selected, encode_selected


def scatter_topk(z: Tensor, k: int) -> Tensor:
    """ReLU of the k largest entries of each row, zeros elsewhere. torch.topk selects without a
    full sort of the row."""
    values, indices = z.topk(k, dim=-1, sorted=False)
    return torch.zeros_like(z).scatter_(-1, indices, F.relu(values))


def auxk_loss(
    x: Tensor, x_hat: Tensor, z: Tensor, dead_mask: Tensor, W_dec: Tensor, aux_k: int
) -> Tensor:
    """||e - e_hat||^2 / ||e - mean(e)||^2, scaled by min(n_dead / aux_k, 1). With no dead latent
    the scale is 0, so AuxK engages only when latents are dead."""
    e = (x - x_hat).detach()
    # Live latents go to -inf: ReLU turns any that topk still picks into zeros, so no host sync
    # is needed to cap aux_k at the number of dead latents.
    f_aux = scatter_topk(z.masked_fill(~dead_mask, float("-inf")), aux_k)
    e_hat = f_aux @ W_dec
    l_aux = (e - e_hat).pow(2).sum() / (e - e.mean(0)).pow(2).sum().clamp_min(1e-12)
    scale = (dead_mask.sum() / aux_k).clamp(max=1.0)
    return scale * l_aux


def auxk_loss_sparse(
    x: Tensor,
    x_hat: Tensor,
    z: Tensor,
    dead_mask: Tensor,
    W_enc: Tensor,
    bias: Tensor,
    W_dec: Tensor,
    aux_k: int,
    target: Tensor | None = None,
) -> Tensor:
    """:func:`auxk_loss` for z = x @ W_enc + bias given WITHOUT autograd (``z`` may be detached):
    the same value and gradients (to W_enc, bias, W_dec, x), computed on the dead latents only.

    The dense version runs a top-k over all d_sae columns, decodes a [B, d_sae] matrix of mostly
    zeros and sends a [B, d_sae] gradient back: three large matrix products even when no latent
    is dead. Here the top-k runs over the dead columns, the decode and the encoder gradient are
    sparse (``sparse.py``), and with no dead latent nothing runs at all. It reads the number of
    dead latents on the host, free on a CPU; on a GPU that would be a sync per step, so ``auxk``
    uses it on CPUs only."""
    n_dead = int(dead_mask.sum())
    if n_dead == 0:
        return x_hat.new_zeros(())
    dead = torch.nonzero(dead_mask).squeeze(1)
    n = z.shape[0]
    k = min(aux_k, n_dead)
    values, j = z.detach().index_select(1, dead).topk(k, dim=1, sorted=False)
    arange = torch.arange(n, device=z.device)
    sel = Selection(
        arange.repeat_interleave(k), dead[j].reshape(-1), arange * k, values.reshape(-1)
    )
    e = ((x if target is None else target) - x_hat).detach()
    e_hat = decode_selected(sel, F.relu(encode_selected(sel, x, W_enc, bias)), W_dec)
    l_aux = (e - e_hat).pow(2).sum() / (e - e.mean(0)).pow(2).sum().clamp_min(1e-12)
    return min(n_dead / aux_k, 1.0) * l_aux


def auxk(
    x: Tensor,
    x_hat: Tensor,
    z: Tensor,
    dead_mask: Tensor,
    W_enc: Tensor,
    bias: Tensor,
    W_dec: Tensor,
    aux_k: int,
    target: Tensor | None = None,
) -> Tensor:
    """AuxK for z = x @ W_enc + bias: the sparse version on a CPU (where it was measured), the
    dense one elsewhere (z must then carry its autograd graph). The residual is
    ``target - x_hat`` (target None: x; a transcoder's y)."""
    if x.device.type == "cpu":
        return auxk_loss_sparse(x, x_hat, z, dead_mask, W_enc, bias, W_dec, aux_k, target)
    return auxk_loss(x if target is None else target, x_hat, z, dead_mask, W_dec, aux_k)
