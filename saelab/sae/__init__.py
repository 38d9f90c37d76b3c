"""SAE maths as plain torch modules: no Lightning, no Hydra, so an exported SAE runs anywhere."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .base import SAE, SAEConfig, SAEOutput
from .gated import GatedConfig, GatedSAE
from .jumprelu import JumpReLUConfig, JumpReLUSAE
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


def load_sae(path: str | os.PathLike, device: str | torch.device = "cpu") -> SAE:
    """Load an SAE: a folder written by ``saelab.io.save_sae`` (SAELens layout) or a Gemma
    Scope ``params.npz`` file."""
    from saelab.io.gemma_scope import load_gemma_scope_npz
    from saelab.io.saelens import load_saelens_folder

    if Path(path).suffix == ".npz":
        return load_gemma_scope_npz(path).to(device)
    cfg, tensors = load_saelens_folder(Path(path))
    fields = dict(cfg.get("saelab_config") or {})
    architecture = fields.pop("architecture", cfg.get("architecture"))
    if not fields:
        fields = {"d_in": cfg["d_in"], "d_sae": cfg["d_sae"]}
        if "k" in cfg:
            fields["k"] = cfg["k"]
    sae = build_sae(architecture, **fields)
    if "threshold" in tensors and hasattr(sae, "log_threshold"):
        tensors["log_threshold"] = tensors.pop("threshold").log()
    missing, unexpected = sae.load_state_dict(tensors, strict=False)
    missing = [
        k for k in missing if k not in sae.training_state
    ]  # exports leave training state out
    if missing or unexpected:
        raise ValueError(
            f"{path} does not match a {architecture} SAE: missing tensors {missing}, "
            f"unexpected tensors {unexpected}"
        )
    return sae.to(device)


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
