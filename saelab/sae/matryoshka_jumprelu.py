"""Matryoshka JumpReLU SAE: saelab's JumpReLU (per-latent learnt thresholds, trained towards a
target L0) with the nested-prefix loss of Matryoshka SAEs (Bussmann et al. 2025), the
combination Gemma Scope 2 trains (docs/maths.md §11.1). With prefix ends m_1 < ... < m_G = d_sae,

    f     = z * H(z - theta)                                  JumpReLU's codes
    loss  = sum_g mean_b ||x - (f[:, :m_g] @ W_dec[:m_g] + b_dec)||^2 + JumpReLU's other terms

so the first latents learn the most general features and later ones refine them. Everything
else (the per-token warm-up, the L0 controller, the dictionary's lr after the warm-up, AuxK, the
pre-activation loss) is JumpReLU's, with its keys; Gemma Scope 2's quadratic L0 penalty is
``sae.experimental.target_l0_method=quadratic``. At inference it is a JumpReLU SAE, and it is
exported as one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .jumprelu import JumpReLUConfig, JumpReLUObjective, JumpReLUSAE, JumpReLUTrainConfig
from .matryoshka import NestedPrefixConfig, NestedPrefixes
from .registry import Family, register


@dataclass
class MatryoshkaJumpReLUConfig(JumpReLUConfig):
    architecture = "matryoshka_jumprelu"


class MatryoshkaJumpReLUSAE(JumpReLUSAE):
    config_class = MatryoshkaJumpReLUConfig

    @torch.no_grad()
    def export_form(self) -> JumpReLUSAE:
        """The same parameters in a plain JumpReLU SAE: nothing about inference is nested."""
        out = JumpReLUSAE.shaped_like(self)
        out.load_state_dict(self.state_dict())
        return out


@dataclass
class MatryoshkaJumpReLUTrainConfig(
    NestedPrefixConfig, JumpReLUTrainConfig, MatryoshkaJumpReLUConfig
):
    pass


class MatryoshkaJumpReLUObjective(NestedPrefixes, JumpReLUObjective):
    """JumpReLU's objective plus the reconstructions of the proper prefixes."""


FAMILY = register(
    Family(
        name="matryoshka_jumprelu",
        sae=MatryoshkaJumpReLUSAE,
        train_config=MatryoshkaJumpReLUTrainConfig,
        objective=MatryoshkaJumpReLUObjective,
        sparsity_knobs=("target_l0", "l0_coefficient"),
    )
)
