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

from dataclasses import dataclass, field

import torch

from .jumprelu import JumpReLUConfig, JumpReLUObjective, JumpReLUSAE, JumpReLUTrainConfig
from .matryoshka import NestedPrefixes, check_prefix_fractions, prefix_ends
from .registry import Family, register


@dataclass
class MatryoshkaJumpReLUConfig(JumpReLUConfig):
    architecture = "matryoshka_jumprelu"


class MatryoshkaJumpReLUSAE(JumpReLUSAE):
    config_class = MatryoshkaJumpReLUConfig

    @torch.no_grad()
    def export_form(self) -> JumpReLUSAE:
        """The same parameters in a plain JumpReLU SAE: nothing about inference is nested."""
        cfg = self.cfg
        out = JumpReLUSAE(
            JumpReLUConfig(
                d_in=self.d_in,
                d_sae=self.d_sae,
                transcoder=cfg.transcoder,
                skip_connection=cfg.skip_connection,
            )
        ).to(self.W_dec)
        out.load_state_dict(self.state_dict())
        return out


@dataclass
class MatryoshkaJumpReLUTrainConfig(JumpReLUTrainConfig, MatryoshkaJumpReLUConfig):
    prefix_fractions: list[float] = field(default_factory=lambda: [0.0625, 0.125, 0.25, 0.5, 1.0])
    """Where the nested dictionaries end, as fractions of d_sae: increasing, the last 1.0. The
    latents before each end must reconstruct x by themselves."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_prefix_fractions(self)

    def prefix_ends(self) -> list[int]:
        return prefix_ends(self.prefix_fractions, self.d_sae)


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
