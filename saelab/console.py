"""What a run shows on the console: its own lines, not Lightning's chatter; and a config error
as one line.

Lightning announces, on every run, hardware the run does not use ("GPU available: False"), an
advertisement ("Tip: ... litlogger"), a notice that the validation limit is the one configured,
and "`Trainer.fit` stopped", written on the progress bar's line. They are dropped by message;
any other notice, warning or error of Lightning's still shows.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from pathlib import Path

CHATTER = (
    "GPU available:",
    "TPU available:",
    "HPU available:",
    "💡 Tip:",
    "`Trainer(limit_",
    "`Trainer.fit` stopped:",
)
LIGHTNING_LOGGERS = (
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
)


def is_terminal() -> bool:
    """Progress bars only on a terminal: in a log file each refresh is a carriage return."""
    return sys.stdout.isatty() and sys.stderr.isatty()


def start_timing(bar, n: int) -> None:
    """Advance a tqdm bar by ``n`` (work done while starting up: the first batch, with the
    reading, tokenising and warm-up before it) and time its rate from now on.

    Counted as throughput, a slow start makes the first ETA many times the real one, and the
    bar's smoothing takes minutes to forget it. The elapsed time still counts from the bar's
    start: only the rate, and so the ETA, leaves the start-up out.
    """
    if bar.disable:
        return
    bar.n += n
    bar.initial = bar.last_print_n = bar.n  # the rate counts what comes after this
    bar.last_print_t = bar._time()  # the bar's own clock, as tqdm's unpause() reads it
    bar.refresh()


def finish_bar(bar) -> None:
    """Close a tqdm bar at 100% of what it counted: work done in whole batches overshoots
    the total asked for, and a source that runs short ends below it."""
    bar.total = bar.n
    bar.close()


def quiet_loaders() -> None:
    """Off a terminal, no bar for loading a model's weights (Hugging Face's own)."""
    if not is_terminal():
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


class ConfigError(ValueError):
    """A config value a run refuses before any work: shown as one line, without a traceback."""


class _DropChatter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(CHATTER)


def quiet_lightning() -> None:
    quiet_loaders()
    for name in LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropChatter) for f in logger.filters):
            logger.addFilter(_DropChatter())


# What Hydra writes into a run folder before the job starts: a folder holding nothing else
# was made for a run that never started.
HYDRA_FILES = {".hydra", "train.log", "multirun.yaml"}


def remove_unused_run_folder(folder: Path) -> None:
    """Remove a run folder holding only what Hydra wrote before the job, and a multirun folder
    left with nothing but its multirun.yaml; a folder with anything else is left alone."""
    folder = Path(folder)
    for candidate in (folder, folder.parent):
        if not candidate.is_dir() or {p.name for p in candidate.iterdir()} - HYDRA_FILES:
            return
        if candidate == folder.parent and not (candidate / "multirun.yaml").is_file():
            return
        shutil.rmtree(candidate)


def exit_on_config_error(error: ConfigError, run_folder: Path) -> None:
    """One line on stderr and exit status 1; the full traceback only with HYDRA_FULL_ERROR=1
    (as Hydra's own errors)."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise error
    remove_unused_run_folder(run_folder)
    print(f"Error: {error}", file=sys.stderr, flush=True)
    raise SystemExit(1)
