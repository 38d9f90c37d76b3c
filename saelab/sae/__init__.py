"""SAE families as plain torch modules: no Lightning, no Hydra, so an exported SAE runs anywhere.

Each family module holds its inference SAE, its training config and objective, and registers
itself (registry.py); importing them here is the one line that makes a family known.
"""

from __future__ import annotations

from . import (  # noqa: F401  (each registers its family)
    batchtopk,
    gated,
    jumprelu,
    matryoshka,
    matryoshka_jumprelu,
    relu,
    topk,
)
from .base import SAE, SAEConfig, SAEOutput
from .batchtopk import BatchTopKConfig, BatchTopKSAE, BatchTopKTrainConfig
from .gated import GatedConfig, GatedSAE, GatedTrainConfig
from .jumprelu import JumpReLUConfig, JumpReLUSAE, JumpReLUTrainConfig
from .loading import load_sae
from .matryoshka import MatryoshkaConfig, MatryoshkaSAE, MatryoshkaTrainConfig
from .matryoshka_jumprelu import (
    MatryoshkaJumpReLUConfig,
    MatryoshkaJumpReLUSAE,
    MatryoshkaJumpReLUTrainConfig,
)
from .objective import Objective, Step, Sync
from .registry import FAMILIES, Family, family
from .relu import ReLUConfig, ReLUSAE, ReLUTrainConfig
from .topk import TopKConfig, TopKSAE, TopKTrainConfig
from .train_config import TrainConfig

# Stable architecture strings (written into exports) -> inference SAE class.
SAE_CLASSES: dict[str, type[SAE]] = {name: f.sae for name, f in FAMILIES.items()}


def build_sae(architecture: str, **config) -> SAE:
    """An inference SAE from its architecture string and config fields (the shape)."""
    cls = family(architecture).sae
    return cls(cls.config_class(**config))


def build_training(architecture: str, **config) -> tuple[SAE, Objective]:
    """The SAE and its training objective from ``sae.*`` keys (any not given take the family's
    defaults, the same as ``python train.py sae=<architecture>``)."""
    fam = family(architecture)
    train_config = fam.train_config(**config)
    sae = fam.sae(fam.sae_config(train_config))
    objective = fam.objective(train_config)
    objective.init_sae(sae)
    return sae, objective


__all__ = [
    "FAMILIES",
    "SAE",
    "SAE_CLASSES",
    "BatchTopKConfig",
    "BatchTopKSAE",
    "BatchTopKTrainConfig",
    "Family",
    "GatedConfig",
    "GatedSAE",
    "GatedTrainConfig",
    "JumpReLUConfig",
    "JumpReLUSAE",
    "JumpReLUTrainConfig",
    "MatryoshkaConfig",
    "MatryoshkaJumpReLUConfig",
    "MatryoshkaJumpReLUSAE",
    "MatryoshkaJumpReLUTrainConfig",
    "MatryoshkaSAE",
    "MatryoshkaTrainConfig",
    "Objective",
    "ReLUConfig",
    "ReLUSAE",
    "ReLUTrainConfig",
    "SAEConfig",
    "SAEOutput",
    "Step",
    "Sync",
    "TopKConfig",
    "TopKSAE",
    "TopKTrainConfig",
    "TrainConfig",
    "build_sae",
    "build_training",
    "family",
    "load_sae",
]
