"""The one place families are known: each family module declares itself with ``register`` and
everything else (the Hydra schemas, the LightningModules, loading, reports, the browser) reads
the declaration. Adding a family is its module, its ``conf/sae/<name>.yaml`` and its name in the
import line of ``saelab/sae/__init__.py``."""

from __future__ import annotations

from dataclasses import dataclass

from .base import SAE
from .objective import Objective


@dataclass(frozen=True)
class Family:
    name: str
    """The stable architecture string (exports, ``conf/sae/<name>.yaml``, ``<name>_schema``)."""
    sae: type[SAE]
    """The inference SAE."""
    train_config: type
    """The flat ``sae.*`` schema: shape, optimisation and the family's training knobs."""
    objective: type[Objective]
    """The training objective (losses, estimators, training state)."""
    sparsity_knobs: tuple[str, ...]
    """The config keys that set its sparsity, in order of precedence (what sweeps vary)."""

    def sae_config(self, train_config):
        """The inference config (the shape and what encode needs) of a training config."""
        import dataclasses

        cls = self.sae.config_class
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: getattr(train_config, k) for k in names})


FAMILIES: dict[str, Family] = {}


def register(family: Family) -> Family:
    if family.name in FAMILIES:
        raise ValueError(f"SAE family {family.name!r} is registered twice")
    if family.sae.config_class.architecture != family.name:
        raise ValueError(
            f"family {family.name!r}: its SAE's config says architecture "
            f"{family.sae.config_class.architecture!r}"
        )
    FAMILIES[family.name] = family
    return family


def family(name: str) -> Family:
    if name not in FAMILIES:
        raise ValueError(f"Unknown SAE architecture {name!r}; known: {', '.join(FAMILIES)}.")
    return FAMILIES[name]
