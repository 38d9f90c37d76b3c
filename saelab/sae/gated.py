"""Gated SAE with weight sharing (Rajamanoharan et al. 2024, arXiv 2404.16014), docs/maths.md §2.

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

from .base import SAE, SAEConfig, affine, reconstruction_loss, require_choice
from .fused import GatedActivation
from .objective import Encoded, Objective, Step
from .registry import Family, register
from .sparse import above, decode_selected, encode_selected
from .train_config import TrainConfig, check


@dataclass
class GatedConfig(SAEConfig):
    architecture = "gated"


class GatedSAE(SAE):
    config_class = GatedConfig
    has_b_enc = False
    saelens_architecture = "gated"
    apply_b_dec_to_input = True

    def __init__(self, cfg: GatedConfig):
        super().__init__(cfg)
        self.b_gate = nn.Parameter(torch.zeros(self.d_sae))
        self.b_mag = nn.Parameter(torch.zeros(self.d_sae))
        self.r_mag = nn.Parameter(torch.zeros(self.d_sae))

    @property
    def b_enc(self) -> Tensor:
        """The gate bias: the threshold-setting bias, as SAELens exports it."""
        return self.b_gate

    def shared_product(self, x: Tensor) -> Tensor:
        """x~ @ W_enc with x~ = x - b_dec, as x @ W_enc - b_dec @ W_enc: the gradient of b_dec
        through it is then a vector product, not a [B, d_sae] x [d_sae, d_in] matrix product."""
        bias = self.input_shift()
        return torch.addmm(bias, x, self.W_enc) if x.dim() == 2 else x @ self.W_enc + bias

    def input_shift(self) -> Tensor:
        """-b_dec @ W_enc, the pre-encoder bias as a shift of the shared product (zero for a
        transcoder, whose b_dec is in the output's space)."""
        if not self.apply_b_dec_to_input:
            return self.b_gate.new_zeros(self.d_sae)
        return -(self.b_dec @ self.W_enc)

    def encode(self, x: Tensor) -> Tensor:
        z = self.shared_product(x)
        pi_gate, pi_mag = z + self.b_gate, z * self.r_mag.exp() + self.b_mag
        # (x~ @ W) * exp(r) == x~ @ (W * exp(r)): scale the [B, M] product, not the weight.
        return (pi_gate > 0).to(pi_mag.dtype) * F.relu(pi_mag)

    def _input_scaled_parameters(self) -> tuple[str, ...]:
        return ("b_gate", "b_mag", "b_dec")


@dataclass
class GatedTrainConfig(TrainConfig, GatedConfig):
    l1_coefficient: float = 1.0
    """lambda on the gate path's L1 (under unit-mean-squared-norm scaling)."""
    variant: str = "standard"
    """'standard': unit-norm decoder; 'ri_l1': L1 weighted by decoder norms, no norm constraint."""
    sparsity_warmup_steps: int | None = 2000

    def default_lr(self) -> float:
        return 5e-5  # public trainers' default

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self, "l1_coefficient", self.l1_coefficient >= 0, "a number >= 0")
        require_choice(self, "variant", ("standard", "ri_l1"))


class GatedObjective(Objective):
    def __init__(self, cfg: GatedTrainConfig):
        super().__init__(cfg)
        self.ri_l1 = cfg.variant == "ri_l1"
        self.unit_norm_decoder = not self.ri_l1

    def _aux_decoder(self, sae: GatedSAE) -> tuple[Tensor, Tensor]:
        # RI-L1 trains the decoder through both terms; the standard aux term freezes it.
        return (sae.W_dec, sae.b_dec) if self.ri_l1 else (sae.W_dec.detach(), sae.b_dec.detach())

    def _terms(self, x: Tensor, gate_sum: Tensor, aux_hat: Tensor, step: Step) -> dict:
        n = x.shape[0]
        # The auxiliary term trains the gate only: its target (x, or a transcoder's y less the
        # skip) carries no gradient to the skip.
        target = x if step.target is None else step.target.detach()
        return {
            "l1": self.cfg.l1_coefficient * step.sparsity_scale * gate_sum / n,
            "aux": reconstruction_loss(target, aux_hat),
        }

    def encode_dense(self, sae: GatedSAE, x: Tensor, step: Step) -> Encoded:
        W_aux, b_aux = self._aux_decoder(sae)
        # One product shared by both paths, and one fused pass for f, ReLU(pi_gate), the L1
        # column sums and the L0 count (fused.GatedActivation; tested against the plain maths).
        f, gate_acts, gate_sums, fired = GatedActivation.apply(
            sae.shared_product(x), sae.b_gate, sae.r_mag.exp(), sae.b_mag
        )
        gate_sum = gate_sums @ W_aux.norm(dim=1) if self.ri_l1 else gate_sums.sum()
        aux_hat = affine(gate_acts, W_aux, b_aux)
        return Encoded(fired / x.shape[0], self._terms(x, gate_sum, aux_hat, step), f=f)

    def encode_sparse(self, sae: GatedSAE, x: Tensor, step: Step) -> Encoded:
        """Few open gates: both paths on the entries with pi_gate > 0 only (sparse.py). There
        H(pi_gate) = 1 and ReLU(pi_gate) = pi_gate; everywhere else f and the gate are 0."""
        W_aux, b_aux = self._aux_decoder(sae)
        with torch.no_grad():
            z = sae.shared_product(x)
            sel = above(z, -sae.b_gate)  # pi_gate = z + b_gate > 0
        del z
        cols = sel.cols
        z_sel = encode_selected(sel, x, sae.W_enc, sae.input_shift())
        gate = F.relu(z_sel + sae.b_gate[cols])
        acts = F.relu(z_sel * sae.r_mag.exp()[cols] + sae.b_mag[cols])
        gate_sum = (gate * W_aux.norm(dim=1)[cols]).sum() if self.ri_l1 else gate.sum()
        aux_hat = decode_selected(sel, gate, W_aux) + b_aux
        l0 = (acts > 0).sum() / x.shape[0]
        return Encoded(l0, self._terms(x, gate_sum, aux_hat, step), sel=sel, acts=acts)


FAMILY = register(
    Family(
        name="gated",
        sae=GatedSAE,
        train_config=GatedTrainConfig,
        objective=GatedObjective,
        sparsity_knobs=("l1_coefficient",),
    )
)
