"""Warn when a run will read its finite training data many times over.

A cache (``data=activations``) or a file (``data=files``) holds a fixed number of rows, and a run
longer than one pass reads them again. An SAE fits a sample it revisits often: its L0 and FVU
on the training rows drift away from those on unseen rows (by how much, measured on the main
job: docs/activation-cache.md#how-many-passes). The warning says so before the first step and
names the two fixes, so that a held-out figure far from the target is not a surprise.
"""

from __future__ import annotations

import logging

import lightning.pytorch as pl

log = logging.getLogger(__name__)

# Passes over the training rows beyond which the warning is given (docs/activation-cache.md).
MAX_PASSES = 4.0


def planned_passes(trainer: pl.Trainer) -> float | None:
    """How many times the run will read each of its training rows, or None where the source is
    not a fixed set of rows (generated or streamed data)."""
    loader = trainer.train_dataloader
    if loader is None or not hasattr(loader, "global_batches"):
        return None
    per_epoch = len(loader)  # batches this rank reads in one pass
    if per_epoch <= 0:
        return None
    if trainer.max_steps is not None and trainer.max_steps > 0:
        return trainer.max_steps * trainer.accumulate_grad_batches / per_epoch
    return float(trainer.max_epochs) if trainer.max_epochs and trainer.max_epochs > 0 else None


class RepeatedDataWarning(pl.Callback):
    """On the first training step's start, warn (rank 0) if the run makes more than
    ``max_passes`` passes over a finite source's training rows."""

    def __init__(self, max_passes: float = MAX_PASSES):
        self.max_passes = max_passes
        self.passes: float | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.passes = planned_passes(trainer)
        if self.passes is None or self.passes <= self.max_passes or not trainer.is_global_zero:
            return
        loader = trainer.train_dataloader
        rows = loader.global_batches * loader.batch_size
        log.warning(
            "this run reads each of its %s training rows %.1f times (more than %g passes): an "
            "SAE fits data it revisits this often, so its held-out L0 and FVU will trail those "
            "on the training batches. Raise data.train_tokens (a larger cache) or lower "
            "trainer.max_steps (docs/activation-cache.md#how-many-passes)",
            f"{rows:,}",
            self.passes,
            self.max_passes,
        )
