"""Standard ReLU SAE, as in Anthropic's April 2024 "training SAEs" update.

    f     = ReLU(x @ W_enc + b_enc)
    x_hat = f @ W_dec + b_dec
    loss  = mse(x, x_hat) + lambda * sum_i f_i * ||W_dec[i]||_2

The decoder norm sits inside the penalty, so there is no unit-norm constraint: shrinking f while
growing W_dec[i] no longer lowers the loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from .base import SAE, SAEConfig, SAEOutput, reconstruction_loss, require_nonnegative


@dataclass
class ReLUConfig(SAEConfig):
    l1_coefficient: float = 5.0
    """lambda on the decoder-norm-weighted L1 (under unit-mean-squared-norm scaling; values do
    not transfer from Anthropic's E||x|| = sqrt(d_in) normalisation)."""

    architecture = "relu"

    def __post_init__(self) -> None:
        super().__post_init__()
        require_nonnegative(self, "l1_coefficient")


class ReLUSAE(SAE):
    config_class = ReLUConfig
    unit_norm_decoder = False

    def __init__(self, cfg: ReLUConfig):
        super().__init__(cfg)
        self.cfg: ReLUConfig = cfg

    def encode(self, x: Tensor) -> Tensor:
        return F.relu(self.pre_acts(x))

    def forward(self, x: Tensor, sparsity_scale: float = 1.0, dead_mask: Tensor | None = None) -> SAEOutput:
        f = self.encode(x)
        x_hat = self.decode(f)
        penalty = (f * self.W_dec.norm(dim=1)).sum(-1).mean()
        losses = {
            "mse": reconstruction_loss(x, x_hat),
            "l1": self.cfg.l1_coefficient * sparsity_scale * penalty,
        }
        return SAEOutput(x_hat, f, losses, {"l0": (f != 0).sum(-1).float().mean()})
