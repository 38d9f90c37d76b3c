"""The training progress bar in optimiser steps of ``trainer.max_steps``.

Lightning's bar counts batches per epoch and names the epoch ("Epoch 15/-2" with
``max_epochs=-1``). An SAE run is sized in steps, and an epoch means little (a cache's pass, or
nothing at all for a stream), so this bar runs once from the run's first step (or the step a
resumed run starts at) to ``max_steps``, with the progress-bar metrics (L0) beside it.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import TQDMProgressBar


class StepProgressBar(TQDMProgressBar):
    def on_train_epoch_start(self, trainer: pl.Trainer, *_: Any) -> None:
        bar = self.train_progress_bar
        if getattr(bar, "_saelab_started", False):
            return  # one bar for the whole run, not one per epoch
        bar.reset(total=trainer.max_steps if trainer.max_steps > 0 else None)
        bar.initial = trainer.global_step
        bar.n = trainer.global_step
        bar.set_description("training steps")
        bar._saelab_started = True
        bar.refresh()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        bar = self.train_progress_bar
        step = trainer.global_step
        if bar is not None and not bar.disable and self._should_update(step, bar.total or 0):
            bar.n = step
            bar.set_postfix(self.get_metrics(trainer, pl_module))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        bar = self.train_progress_bar
        if not bar.disable:
            bar.set_postfix(self.get_metrics(trainer, pl_module))

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)  # the logger's version number says nothing about the run
        return metrics
