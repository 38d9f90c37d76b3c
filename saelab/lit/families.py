"""The LightningModule of each SAE family. All the behaviour is in ``SAELitModule`` and in the
family's own module (saelab/sae/<family>.py); a class here only names which family it trains,
so that ``JumpReLULit`` and its siblings are ordinary classes to import, read and subclass."""

from __future__ import annotations

from saelab.sae.registry import FAMILIES

from .base import SAELitModule


class JumpReLULit(SAELitModule):
    """Trains a JumpReLU SAE (``sae=jumprelu``, ``sae=jumprelu_paper``)."""

    family = FAMILIES["jumprelu"]
    config_class = family.train_config


class TopKLit(SAELitModule):
    """Trains a TopK SAE (``sae=topk``)."""

    family = FAMILIES["topk"]
    config_class = family.train_config


class BatchTopKLit(SAELitModule):
    """Trains a BatchTopK SAE (``sae=batchtopk``)."""

    family = FAMILIES["batchtopk"]
    config_class = family.train_config


class MatryoshkaLit(SAELitModule):
    """Trains a Matryoshka BatchTopK SAE (``sae=matryoshka``)."""

    family = FAMILIES["matryoshka"]
    config_class = family.train_config


class MatryoshkaJumpReLULit(SAELitModule):
    """Trains a Matryoshka JumpReLU SAE (``sae=matryoshka_jumprelu``)."""

    family = FAMILIES["matryoshka_jumprelu"]
    config_class = family.train_config


class GatedLit(SAELitModule):
    """Trains a Gated SAE (``sae=gated``)."""

    family = FAMILIES["gated"]
    config_class = family.train_config


class ReLULit(SAELitModule):
    """Trains a ReLU SAE with an L1 penalty (``sae=relu``)."""

    family = FAMILIES["relu"]
    config_class = family.train_config


LIT_CLASSES: dict[str, type[SAELitModule]] = {
    cls.family.name: cls
    for cls in (
        JumpReLULit,
        TopKLit,
        BatchTopKLit,
        MatryoshkaLit,
        MatryoshkaJumpReLULit,
        GatedLit,
        ReLULit,
    )
}
if set(LIT_CLASSES) != set(FAMILIES):  # a new family needs its class here
    missing = sorted(set(FAMILIES) - set(LIT_CLASSES))
    raise ImportError(f"saelab/lit/families.py has no LightningModule for the families {missing}")


def lit_class_for(config) -> type[SAELitModule]:
    """The LightningModule class for a family config (instance or class)."""
    return LIT_CLASSES[config.architecture]
