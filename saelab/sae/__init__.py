"""SAE maths as plain torch modules: no Lightning, no Hydra, so an exported SAE runs anywhere."""

from __future__ import annotations

from .base import SAE, SAEConfig, SAEOutput
from .gated import GatedConfig, GatedSAE
from .jumprelu import JumpReLUConfig, JumpReLUSAE
from .loading import load_sae
from .relu import ReLUConfig, ReLUSAE
from .topk import BatchTopKConfig, BatchTopKSAE, TopKConfig, TopKSAE

# Stable architecture strings (written into exports) -> SAE class.
SAE_CLASSES: dict[str, type[SAE]] = {
    cls.config_class.architecture: cls
    for cls in (JumpReLUSAE, GatedSAE, TopKSAE, BatchTopKSAE, ReLUSAE)
}


def build_sae(architecture: str, **config) -> SAE:
    """Build an SAE from its architecture string and config fields."""
    if architecture not in SAE_CLASSES:
        raise ValueError(
            f"Unknown SAE architecture {architecture!r}; known: {', '.join(SAE_CLASSES)}."
        )
    cls = SAE_CLASSES[architecture]
    return cls(cls.config_class(**config))


__all__ = [
    "SAE",
    "SAE_CLASSES",
    "BatchTopKConfig",
    "BatchTopKSAE",
    "GatedConfig",
    "GatedSAE",
    "JumpReLUConfig",
    "JumpReLUSAE",
    "ReLUConfig",
    "ReLUSAE",
    "SAEConfig",
    "SAEOutput",
    "TopKConfig",
    "TopKSAE",
    "build_sae",
    "load_sae",
]
