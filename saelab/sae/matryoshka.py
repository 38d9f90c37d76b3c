"""Matryoshka BatchTopK SAE (Bussmann et al. 2025, "Learning Multi-Level Features with
Matryoshka SAEs", arXiv 2503.17547), docs/maths.md §11.

BatchTopK's SAE and selection, trained so that every prefix of the dictionary reconstructs the
input on its own: with prefix ends m_1 < ... < m_G = d_sae,

    x_hat_g = f[:, :m_g] @ W_dec[:m_g] + b_dec
    loss    = sum_g mean_b ||x - x_hat_g||^2 + alpha * L_aux

so the first latents learn the most general features and later ones refine them, instead of
general features splitting into specific ones as the dictionary grows (feature absorption).
At inference it is BatchTopK (one global threshold), exported as the equivalent JumpReLU SAE.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from .base import reconstruction_loss
from .batchtopk import BatchTopKConfig, BatchTopKObjective, BatchTopKSAE, BatchTopKTrainConfig
from .objective import Encoded, Step
from .registry import Family, register
from .sparse import decode_selected
from .train_config import check


@dataclass
class MatryoshkaConfig(BatchTopKConfig):
    architecture = "matryoshka"


class MatryoshkaSAE(BatchTopKSAE):
    config_class = MatryoshkaConfig


@dataclass
class NestedPrefixConfig:
    """The nested dictionaries' key: a mixin placed first among a Matryoshka family's training
    config bases, so its check runs after the family's own."""

    prefix_fractions: list[float] = field(default_factory=lambda: [0.0625, 0.125, 0.25, 0.5, 1.0])
    """Where the nested dictionaries end, as fractions of d_sae: increasing, the last 1.0. The
    latents before each end must reconstruct x by themselves."""

    def __post_init__(self) -> None:
        super().__post_init__()
        ends = self.prefix_ends()
        ok = (
            len(ends) >= 1
            and self.prefix_fractions[-1] == 1
            and all(a < b for a, b in zip([0, *ends], ends))
        )
        allowed = (
            "increasing fractions in (0, 1] ending at 1.0, each prefix at least one latent "
            f"longer than the last (d_sae={self.d_sae})"
        )
        check(self, "prefix_fractions", ok, allowed)

    def prefix_ends(self) -> list[int]:
        """m_1 < ... < m_G = d_sae."""
        return [round(f * self.d_sae) for f in self.prefix_fractions]


@dataclass
class MatryoshkaTrainConfig(NestedPrefixConfig, BatchTopKTrainConfig, MatryoshkaConfig):
    pass


class NestedPrefixes:
    """Adds the reconstructions of the proper prefixes of the dictionary to a family's
    objective (the full one is the step's ``mse`` term): a mixin before any objective whose
    ``Encoded`` holds the codes, dense (``f``) or selected (``sel``, ``acts``). The config
    needs ``prefix_ends()``."""

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self.ends = cfg.prefix_ends()[:-1]

    def _prefix_term(self, x: Tensor, decodes: list[Tensor]) -> dict[str, Tensor]:
        if not decodes:  # one prefix: the whole dictionary, the family's own loss
            return {}
        return {"prefix_mse": sum(reconstruction_loss(x, x_hat) for x_hat in decodes)}

    def encode_dense(self, sae, x: Tensor, step: Step) -> Encoded:
        enc = super().encode_dense(sae, x, step)
        decodes, x_hat, start = [], sae.b_dec, 0
        for end in self.ends:  # cumulative: each slice of the decoder multiplied once
            x_hat = x_hat + enc.f[:, start:end] @ sae.W_dec[start:end]
            decodes.append(x_hat)
            start = end
        return enc._replace(terms={**enc.terms, **self._prefix_term(step.target, decodes)})

    def encode_sparse(self, sae, x: Tensor, step: Step) -> Encoded:
        enc = super().encode_sparse(sae, x, step)
        sel, acts = enc.sel, enc.acts
        decodes, x_hat, start = [], sae.b_dec, 0
        for end in self.ends:  # cumulative: each selected entry decoded once, in its segment
            part = (sel.cols >= start) & (sel.cols < end)
            x_hat = x_hat + decode_selected(sel.subset(part), acts[part], sae.W_dec)
            decodes.append(x_hat)
            start = end
        return enc._replace(terms={**enc.terms, **self._prefix_term(step.target, decodes)})


class MatryoshkaObjective(NestedPrefixes, BatchTopKObjective):
    """BatchTopK's objective plus the reconstructions of the proper prefixes."""


FAMILY = register(
    Family(
        name="matryoshka",
        sae=MatryoshkaSAE,
        train_config=MatryoshkaTrainConfig,
        objective=MatryoshkaObjective,
        sparsity_knobs=("k",),
    )
)
