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

from .base import (
    SAE,
    SAEConfig,
    SAEOutput,
    affine,
    reconstruction_loss,
    require_choice,
    require_nonnegative,
)
from .fused import GatedActivation
from .sparse import above, decode_selected, encode_selected, use_sparse


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

    def saelens_cfg(self) -> dict:
        """SAELens's name for this family and the cfg.json fields its loader needs
        (docs/interop.md)."""
        return {"architecture": "gated", "apply_b_dec_to_input": True}

    def export_form(self) -> SAE:
        """The SAE written to disk by ``saelab.io.save_sae`` (this one)."""
        return self

    @property
    def unit_norm_decoder(self) -> bool:  # type: ignore[override]
        return self.cfg.variant == "standard"

    @property
    def b_enc(self) -> Tensor:
        """The gate bias: the threshold-setting bias, as SAELens exports it."""
        return self.b_gate

    def shared_product(self, x: Tensor) -> Tensor:
        """x~ @ W_enc with x~ = x - b_dec, as x @ W_enc - b_dec @ W_enc: the gradient of b_dec
        through it is then a vector product, not a [B, d_sae] x [d_sae, d_in] matrix product."""
        bias = -(self.b_dec @ self.W_enc)
        return torch.addmm(bias, x, self.W_enc) if x.dim() == 2 else x @ self.W_enc + bias

    def _paths(self, x: Tensor) -> tuple[Tensor, Tensor]:
        z = self.shared_product(x)
        pi_gate = z + self.b_gate
        # (x~ @ W) * exp(r) == x~ @ (W * exp(r)): scale the [B, M] product, not the weight.
        pi_mag = z * self.r_mag.exp() + self.b_mag
        return pi_gate, pi_mag

    def encode(self, x: Tensor) -> Tensor:
        pi_gate, pi_mag = self._paths(x)
        return (pi_gate > 0).to(pi_mag.dtype) * F.relu(pi_mag)

    def forward(
        self, x: Tensor, sparsity_scale: float = 1.0, dead_mask: Tensor | None = None
    ) -> SAEOutput:
        x2 = x.reshape(-1, self.d_in)
        n = x2.shape[0]
        ri_l1 = self.cfg.variant == "ri_l1"
        # RI-L1 trains the decoder through both terms; the standard aux term freezes it.
        W_aux, b_aux = (
            (self.W_dec, self.b_dec) if ri_l1 else (self.W_dec.detach(), self.b_dec.detach())
        )
        if use_sparse(x.device, self._density):
            f, x_hat, gate_sum, aux_hat, l0 = self._sparse_paths(x2, W_aux, b_aux, ri_l1)
        else:
            # One product shared by both paths, and one fused pass for f, ReLU(pi_gate), the L1
            # column sums and the L0 count (fused.GatedActivation; tested against the plain maths).
            f, gate_acts, gate_sums, fired = GatedActivation.apply(
                self.shared_product(x2), self.b_gate, self.r_mag.exp(), self.b_mag
            )
            x_hat = self.decode(f)
            gate_sum = gate_sums @ W_aux.norm(dim=1) if ri_l1 else gate_sums.sum()
            aux_hat = affine(gate_acts, W_aux, b_aux)
            l0 = fired / n
        self._note_density(x, l0)
        losses = {
            "mse": reconstruction_loss(x2, x_hat),
            "l1": self.cfg.l1_coefficient * sparsity_scale * gate_sum / n,
            "aux": reconstruction_loss(x2, aux_hat),
        }
        lead = x.shape[:-1]
        return SAEOutput(
            x_hat.view(*lead, self.d_in), f.view(*lead, self.d_sae), losses, {"l0": l0}
        )

    def _sparse_paths(self, x: Tensor, W_aux: Tensor, b_aux: Tensor, ri_l1: bool):
        """Few open gates: both paths on the entries with pi_gate > 0 only (sparse.py). There
        H(pi_gate) = 1 and ReLU(pi_gate) = pi_gate; everywhere else f and the gate are 0."""
        with torch.no_grad():
            z = self.shared_product(x)
            sel = above(z, -self.b_gate)  # pi_gate = z + b_gate > 0
        cols = sel.cols
        z_sel = encode_selected(sel, x, self.W_enc, -(self.b_dec @ self.W_enc))
        gate = F.relu(z_sel + self.b_gate[cols])
        acts = F.relu(z_sel * self.r_mag.exp()[cols] + self.b_mag[cols])
        gate_sum = (gate * W_aux.norm(dim=1)[cols]).sum() if ri_l1 else gate.sum()
        x_hat = decode_selected(sel, acts, self.W_dec) + self.b_dec
        aux_hat = decode_selected(sel, gate, W_aux) + b_aux
        shape = z.shape
        del z
        return sel.dense(acts, shape), x_hat, gate_sum, aux_hat, (acts > 0).sum() / x.shape[0]

    def _input_scaled_parameters(self) -> tuple[str, ...]:
        return ("b_gate", "b_mag", "b_dec")
