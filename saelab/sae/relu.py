"""Standard ReLU SAE, as in Anthropic's April 2024 "training SAEs" update.

    f     = ReLU(x @ W_enc + b_enc)
    x_hat = f @ W_dec + b_dec
    loss  = mse(x, x_hat) + lambda * sum_i f_i * ||W_dec[i]||_2

The decoder norm sits inside the penalty, so there is no unit-norm constraint: shrinking f while
growing W_dec[i] no longer lowers the loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import SAE, SAEConfig, SAEOutput, reconstruction_loss, require_nonnegative
from .fused import ReLUWithColumnSums
from .sparse import above, decode_selected, encode_selected, use_sparse


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

    def saelens_cfg(self) -> dict:
        """SAELens's name for this family and the cfg.json fields its loader needs
        (docs/interop.md)."""
        return {"architecture": "standard", "apply_b_dec_to_input": False}

    def export_form(self) -> SAE:
        """The SAE written to disk by ``saelab.io.save_sae`` (this one)."""
        return self

    def encode(self, x: Tensor) -> Tensor:
        return F.relu(self.pre_acts(x))

    def forward(
        self, x: Tensor, sparsity_scale: float = 1.0, dead_mask: Tensor | None = None
    ) -> SAEOutput:
        x2 = x.reshape(-1, self.d_in)
        n = x2.shape[0]
        norms = self.W_dec.norm(dim=1)
        if use_sparse(x.device, self._density):  # few active latents: sparse.py
            with torch.no_grad():
                z = self.pre_acts(x2)
            sel = above(z, 0.0)
            acts = F.relu(encode_selected(sel, x2, self.W_enc, self.b_enc))
            penalty = (acts * norms[sel.cols]).sum() / n
            x_hat = decode_selected(sel, acts, self.W_dec) + self.b_dec
            l0 = torch.tensor(len(acts) / n)
            shape = z.shape
            del z
            f = sel.dense(acts, shape)
        else:
            # ReLU in place in z's buffer, with column sums: sum_b sum_i f_bi ||W_dec[i]|| is
            # sums . ||W_dec|| (fused.ReLUWithColumnSums), no [B, d_sae] temporary.
            f, sums, fired = ReLUWithColumnSums.apply(self.pre_acts(x2))
            penalty = sums @ norms / n
            x_hat = self.decode(f)
            l0 = fired / n
        self._note_density(x, l0)
        losses = {
            "mse": reconstruction_loss(x2, x_hat),
            "l1": self.cfg.l1_coefficient * sparsity_scale * penalty,
        }
        lead = x.shape[:-1]
        return SAEOutput(
            x_hat.view(*lead, self.d_in), f.view(*lead, self.d_sae), losses, {"l0": l0}
        )
