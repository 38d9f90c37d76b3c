"""Learning-rate and sparsity-coefficient schedules as pure functions of the optimiser step.

Warm-ups are given in steps (the papers' numbers assume runs of 10^5-10^6 steps) and capped at
``max_warmup_fraction`` of the run, so a short run is not spent entirely warming up.
"""

from __future__ import annotations

import math


def effective_warmup(steps: int | None, total_steps: int, max_fraction: float) -> int:
    """min(steps, max_fraction * total_steps); ``None`` means "the fraction of the run"."""
    cap = int(max_fraction * total_steps)
    return cap if steps is None else min(steps, cap)


def lr_factor(
    step: int, total_steps: int, warmup: int, warmup_start: float, decay_fraction: float
) -> float:
    """Multiplier of the base learning rate.

    Cosine warm-up from ``warmup_start`` to 1 over ``warmup`` steps (Gemma Scope), then constant,
    then linear decay to 0 over the last ``decay_fraction`` of the run (Anthropic's April update).
    """
    if warmup > 0 and step < warmup:
        progress = step / warmup
        return warmup_start + (1 - warmup_start) * 0.5 * (1 - math.cos(math.pi * progress))
    decay_steps = int(decay_fraction * total_steps)
    decay_start = total_steps - decay_steps
    if decay_steps > 0 and step >= decay_start:
        return max(0.0, (total_steps - step) / decay_steps)
    return 1.0


def sparsity_factor(step: int, warmup: int) -> float:
    """Linear warm-up of the sparsity coefficient from 0 to 1 over ``warmup`` steps."""
    if warmup <= 0:
        return 1.0
    return min(1.0, step / warmup)
