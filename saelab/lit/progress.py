"""The training progress bar in optimiser steps of ``trainer.max_steps``.

Lightning's bar counts batches per epoch and names the epoch ("Epoch 15/-2" with
``max_epochs=-1``). An SAE run is sized in steps, and an epoch means little (a cache's pass, or
nothing at all for a stream), so this bar runs once from the run's first step (or the step a
resumed run starts at) to ``max_steps``, with the progress-bar metrics (the training batch's
L0) beside it.

One bar per phase: validation gets none (a nested bar per validation is a dozen bars in a
run). When stdout is not a terminal (a log file, a scheduler's capture) the bar would write
carriage returns for every refresh; there the progress is printed as plain lines instead, one
per tenth of the run and one at its end.
"""

from __future__ import annotations

import sys
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm

LINES = 10  # plain progress lines per run when stdout is not a terminal


class StepProgressBar(TQDMProgressBar):
    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.plain = not sys.stdout.isatty()
        self._last_line = -1

    def init_train_tqdm(self) -> Tqdm:
        return Tqdm(disable=True) if self.plain else super().init_train_tqdm()

    def init_validation_tqdm(self) -> Tqdm:
        return Tqdm(disable=True)

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
        if self.plain:
            self._print_line(trainer, pl_module)
        elif bar is not None and not bar.disable and self._should_update(step, bar.total or 0):
            bar.n = step
            bar.set_postfix(self.get_metrics(trainer, pl_module))

    def _print_line(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        step, total = trainer.global_step, trainer.max_steps
        if total <= 0 or self.is_disabled:
            return
        tenth = step * LINES // total
        if tenth == self._last_line or (step < total and tenth == 0):
            return
        self._last_line = tenth
        metrics = self.get_metrics(trainer, pl_module)
        shown = "  ".join(f"{k}={_short(v)}" for k, v in metrics.items())
        print(f"training steps {step}/{total} ({100 * step // total}%)  {shown}", flush=True)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        bar = self.train_progress_bar
        if not bar.disable:
            bar.set_postfix(self.get_metrics(trainer, pl_module))

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)  # the logger's version number says nothing about the run
        # The bar's L0 is the last training batch's: named so, apart from the summary's figures.
        if "l0" in metrics:
            metrics["batch_l0"] = metrics.pop("l0")
        return metrics


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)
