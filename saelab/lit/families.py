"""One LightningModule class per registered SAE family (``JumpReLULit``, ``TopKLit``, ...), made
from the registry: a family declares everything it trains with in its own module
(saelab/sae/<family>.py), so nothing here changes when a family is added."""

from __future__ import annotations

from saelab.sae.registry import FAMILIES, Family

from .base import SAELitModule


def _lit_class(family: Family) -> type[SAELitModule]:
    name = family.sae.__name__.removesuffix("SAE") + "Lit"
    namespace = {
        "family": family,
        "config_class": family.train_config,
        "__module__": __name__,
        "__qualname__": name,
        "__doc__": f"The LightningModule of the {family.name!r} family ({family.sae.__name__}).",
    }
    return type(name, (SAELitModule,), namespace)


LIT_CLASSES: dict[str, type[SAELitModule]] = {
    name: _lit_class(family) for name, family in FAMILIES.items()
}


def lit_class_for(config) -> type[SAELitModule]:
    """The LightningModule class for a family config (instance or class)."""
    return LIT_CLASSES[config.architecture]


def __getattr__(name: str) -> type[SAELitModule]:
    for cls in LIT_CLASSES.values():
        if cls.__name__ == name:
            return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
