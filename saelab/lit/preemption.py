"""Stop cleanly when asked to: SIGTERM (a scheduler pre-empting the job) or SIGINT (Ctrl-C).

The signal handler only records the signal. At the end of the current training step every rank
learns whether ANY rank was signalled (one all-reduce: a scheduler may signal only some
processes), then all of them save the checkpoint together and stop. So a pre-empted run loses
no finished step, and ``python train.py ... resume=<run folder>`` continues it exactly.
A second Ctrl-C stops at once (KeyboardInterrupt), without a checkpoint.

Lightning's own SIGTERM handling raises an exception at the next step WITHOUT saving; the
handlers installed here in ``on_train_start`` (after Lightning installs its own) replace it for
the rest of training and are removed at the end of training.
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path

import lightning.pytorch as pl

log = logging.getLogger(__name__)


class StopOnSignal(pl.Callback):
    def __init__(
        self, checkpoint_path: Path, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)
    ):
        self.checkpoint_path = Path(checkpoint_path)
        self.signals = signals
        self.received: int | None = None  # the signal this process got, if any
        self.stopped_at: int | None = None  # the step at which training stopped for a signal
        self._previous: dict[int, object] = {}

    # --- handlers --------------------------------------------------------------------------
    def _handle(self, signum: int, frame) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: the user does not want to wait
        self.received = signum

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # Python delivers signals to the main thread only
        for signum in self.signals:
            self._previous[signum] = signal.signal(signum, self._handle)

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    # --- stopping at a step boundary -------------------------------------------------------
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        stop = self.received is not None
        if trainer.world_size > 1:  # every rank must stop at the same step: any rank decides
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if not stop or self.stopped_at is not None:
            return
        name = signal.Signals(self.received or signal.SIGTERM).name
        trainer.save_checkpoint(
            self.checkpoint_path, weights_only=False
        )  # all ranks: collective under FSDP
        self.stopped_at = trainer.global_step
        trainer.should_stop = True
        if trainer.is_global_zero:
            log.warning(
                "%s received: saved %s at step %d and stopped; continue with resume=%s",
                name,
                self.checkpoint_path,
                trainer.global_step,
                self.checkpoint_path.parent.parent,
            )

    @property
    def exit_code(self) -> int:
        """The shell's convention for a process ended by a signal: 128 + its number."""
        return 128 + int(self.received or signal.SIGTERM)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._restore()
