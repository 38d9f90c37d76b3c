"""Gated SAE with weight sharing (Rajamanoharan et al. 2024, arXiv 2404.16014).

    x~      = x - b_dec
    pi_gate = x~ @ W_enc + b_gate                        (W_enc is the paper's W_gate)
    pi_mag  = x~ @ (W_enc * exp(r_mag)) + b_mag
    f       = H(pi_gate) * ReLU(pi_mag)
    loss    = mse(x, x_hat) + lambda * ||ReLU(pi_gate)||_1 + mse(x, x_hat_frozen(ReLU(pi_gate)))

The auxiliary term decodes the gate path through a DETACHED decoder; without it the gate has no
reconstruction signal and collapses. Variant ``ri_l1`` (the paper's baseline in the JumpReLU
comparison) weights the L1 term by decoder row norms and drops the unit-norm constraint. The
decoder must then be frozen in both places or in neither; saelab picks neither, so the penalty is
exactly invariant to moving a latent's scale between encoder and decoder (the point of RI-L1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import SAE, SAEConfig, SAEOutput, reconstruction_loss, require_choice, require_nonnegative


@dataclass
class GatedConfig(SAEConfig):
    l1_coefficient: float = 1.0
    """lambda on the gate path's L1 (under unit-mean-squared-norm scaling)."""
    variant: str = "standard"
    """'standard': unit-norm decoder; 'ri_l1': L1 weighted by decoder norms, no norm constraint."""

    architecture = "gated"

    def __post_init__(self) -> None:
        super().__post_init__()
        require_nonnegative(self, "l1_coefficient")
        require_choice(self, "variant", ("standard", "ri_l1"))


class GatedSAE(SAE):
    config_class = GatedConfig
    has_b_enc = False

    def __init__(self, cfg: GatedConfig):
        super().__init__(cfg)
        self.cfg: GatedConfig = cfg
        self.b_gate = nn.Parameter(torch.zeros(self.d_sae))
        self.b_mag = nn.Parameter(torch.zeros(self.d_sae))
        self.r_mag = nn.Parameter(torch.zeros(self.d_sae))

    @property
    def unit_norm_decoder(self) -> bool:  # type: ignore[override]
        return self.cfg.variant == "standard"

    @property
    def b_enc(self) -> Tensor:
        """The gate bias: the threshold-setting bias, as SAELens exports it."""
        return self.b_gate

    def _paths(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x_centered = x - self.b_dec
        pi_gate = x_centered @ self.W_enc + self.b_gate
        # (x~ @ W) * exp(r) == x~ @ (W * exp(r)): scale the [B, M] product, not the weight.
        pi_mag = (x_centered @ self.W_enc) * self.r_mag.exp() + self.b_mag
        return pi_gate, pi_mag

    def encode(self, x: Tensor) -> Tensor:
        pi_gate, pi_mag = self._paths(x)
        return (pi_gate > 0).to(pi_mag.dtype) * F.relu(pi_mag)

    def forward(self, x: Tensor, sparsity_scale: float = 1.0, dead_mask: Tensor | None = None) -> SAEOutput:
        pi_gate, pi_mag = self._paths(x)
        f = (pi_gate > 0).to(pi_mag.dtype) * F.relu(pi_mag)
        x_hat = self.decode(f)
        gate_acts = F.relu(pi_gate)
        if self.cfg.variant == "ri_l1":
            W_dec, b_dec = self.W_dec, self.b_dec
            gate_acts_weighted = gate_acts * W_dec.norm(dim=1)
        else:
            W_dec, b_dec = self.W_dec.detach(), self.b_dec.detach()
            gate_acts_weighted = gate_acts
        losses = {
            "mse": reconstruction_loss(x, x_hat),
            "l1": self.cfg.l1_coefficient * sparsity_scale * gate_acts_weighted.sum(-1).mean(),
            "aux": reconstruction_loss(x, gate_acts @ W_dec + b_dec),
        }
        l0 = (f != 0).sum(-1).float().mean()
        return SAEOutput(x_hat, f, losses, {"l0": l0})

    def _input_scaled_parameters(self) -> tuple[str, ...]:
        return ("b_gate", "b_mag", "b_dec")
