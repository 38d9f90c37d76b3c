"""Training knobs shared by every family. A family's Hydra schema is its SAE config (the maths)
plus these (the optimisation), one flat dataclass, so ``sae.lr`` and ``sae.k`` sit side by side."""

from __future__ import annotations

import math
from dataclasses import dataclass


def width_scaled_lr(cfg, lr_at: float, width: int) -> float:
    """Adam lr for this config's d_sae, scaled as 1/sqrt(d_sae) (Gao et al. 2024's rule) from
    its value ``lr_at`` at d_sae = ``width``. Callable before SAEConfig has filled in d_sae."""
    d_sae = cfg.d_sae if cfg.d_sae is not None else cfg.d_in * cfg.expansion_factor
    return lr_at / math.sqrt(d_sae / width)


@dataclass
class TrainConfig:
    lr: float = 7e-5
    """Adam learning rate (family default; the JumpReLU paper's 7e-5)."""
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
    """Train on x / s with s fixed so that E||x/s||^2 = 1 (docs/maths.md §0); s is folded in at export."""
    normalization_tokens: int = 1_000_000
    """Tokens read at the start of training to estimate s."""
    token_norm_clip: float | None = None
    """Prototype (bench/robustness.py): in training only, a token whose norm exceeds this
    multiple of its batch's median token norm is scaled down to that norm (input and target
    alike), so a few massive-activation tokens cannot dominate the squared error. None = off."""

    def __post_init__(self) -> None:
        parent = getattr(super(), "__post_init__", None)
        if parent is not None:
            parent()
        if self.token_norm_clip is not None and not self.token_norm_clip > 0:
            raise ValueError(
                f"{type(self).__name__}.token_norm_clip={self.token_norm_clip!r} is invalid: it "
                "must be > 0 (a multiple of the batch's median token norm) or null."
            )
        for key in ("lr", "adam_eps", "normalization_tokens", "dead_tokens_window"):
            if not getattr(self, key) > 0:
                raise ValueError(
                    f"{type(self).__name__}.{key}={getattr(self, key)!r} is invalid: it must be > 0."
                )
        for key in (
            "adam_beta1",
            "adam_beta2",
            "lr_warmup_start",
            "lr_decay_fraction",
            "max_warmup_fraction",
        ):
            if not 0 <= getattr(self, key) <= 1:
                raise ValueError(
                    f"{type(self).__name__}.{key}={getattr(self, key)!r} is invalid: it must be in [0, 1]."
                )
        for key in ("lr_warmup_steps", "sparsity_warmup_steps"):
            value = getattr(self, key)
            if value is not None and value < 0:
                raise ValueError(
                    f"{type(self).__name__}.{key}={value!r} is invalid: it must be >= 0."
                )
