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


def scatter_topk(z: Tensor, k: int) -> Tensor:
    """ReLU of the k largest entries of each row, zeros elsewhere. torch.topk selects without a
    full sort of the row."""
    values, indices = z.topk(k, dim=-1, sorted=False)
    return torch.zeros_like(z).scatter_(-1, indices, F.relu(values))


def auxk_loss(x: Tensor, x_hat: Tensor, z: Tensor, dead_mask: Tensor, W_dec: Tensor, aux_k: int) -> Tensor:
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
