"""Training knobs shared by every family. A family's Hydra schema (``sae.*``) is ONE flat
dataclass: its inference config (the shape) + these (the optimisation) + its own training knobs,
with the family's defaults, so ``sae.lr`` and ``sae.k`` sit side by side and every way of
building a family (the CLI, the Python API, a multi-SAE member) trains the same SAE."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from operator import attrgetter


@dataclass
class TrainConfig:
    lr: float | None = None
    """Adam learning rate; None = the family's default (``default_lr``)."""
    adam_beta1: float = 0.0
    """beta1 = 0 as in Gemma Scope: momentum hurts with a sparse, jumpy loss."""
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    lr_warmup_steps: int = 1000
    lr_warmup_start: float = 0.1
    """Learning rate at step 0 as a fraction of ``lr`` (cosine warm-up)."""
    lr_decay_fraction: float = 0.0
    """Linear decay to 0 over this final fraction of the run (ReLU-April uses 0.2)."""
    sparsity_warmup_steps: int | None = 10_000
    """Linear warm-up of the sparsity coefficient; None = ``max_warmup_fraction`` of the run."""
    max_warmup_fraction: float = 0.2
    """No warm-up is longer than this fraction of the run (short runs scale warm-ups down)."""
    dead_tokens_window: int = 10_000_000
    """A latent is dead when it has not fired for this many training tokens (capped at a tenth
    of the run's tokens so short runs can see dead latents)."""
    normalize_activations: bool = True
    """Train on x / s with s fixed so that E||x/s||^2 = 1 (docs/maths.md §0); s is folded in at
    export."""
    normalization_tokens: int = 1_000_000
    """Tokens read (in chunks) at the start of training to estimate s. data=stream reads at
    most its first shuffle window (data.buffer_tokens rows) and trains on them (docs/streaming.md)."""

    def default_lr(self) -> float:
        """The family's learning rate when ``lr`` is None."""
        return 7e-5

    def __post_init__(self) -> None:
        parent = getattr(super(), "__post_init__", None)
        if parent is not None:
            parent()  # the shape first: everything below may use d_sae
        require_finite(self)
        if self.lr is None:
            self.lr = self.default_lr()
        for key in ("lr", "adam_eps", "normalization_tokens", "dead_tokens_window"):
            check(self, key, getattr(self, key) > 0, "> 0")
        for key in (
            "adam_beta1",
            "adam_beta2",
            "lr_warmup_start",
            "lr_decay_fraction",
            "max_warmup_fraction",
        ):
            check(self, key, 0 <= getattr(self, key) <= 1, "in [0, 1]")
        for key in ("lr_warmup_steps", "sparsity_warmup_steps"):
            value = getattr(self, key)
            check(self, key, value is None or value >= 0, ">= 0")


def check(cfg: object, key: str, ok: bool, allowed: str) -> None:
    """A ValueError naming the key, its value and what is allowed (the runner rewords the class
    name to ``sae.``, as users type it)."""
    if not ok:
        raise ValueError(
            f"{type(cfg).__name__}.{key}={attrgetter(key)(cfg)!r} is invalid: it must be {allowed}."
        )


def require_finite(cfg: object) -> None:
    """Every float knob is a finite number: inf passes ``> 0`` checks and NaN fails them with a
    confusing message, and either would train an SAE of NaNs."""
    for field in dataclasses.fields(cfg):
        value = getattr(cfg, field.name)
        if isinstance(value, float):
            check(cfg, field.name, math.isfinite(value), "a finite number")


def width_scaled_lr(cfg, lr_at: float, width: int) -> float:
    """Adam lr for this config's d_sae, scaled as 1/sqrt(d_sae) (Gao et al. 2024's rule) from
    its value ``lr_at`` at d_sae = ``width`` (docs/maths.md §3.6)."""
    return lr_at / math.sqrt(cfg.d_sae / width)
