"""Checks of a run before any work: the run-level config keys (the family and data groups check
their own, in their dataclasses), and what the run folder already holds.

A finished run is never overwritten silently. Rerunning a command into a folder that holds
exports (``sae/`` or ``metrics.json``):
- with a checkpoint behind ``trainer.max_steps``: resumes and extends the run (as any resume);
- with a checkpoint at ``trainer.max_steps`` (the same finished run): does nothing and returns
  the metrics it wrote (so a pre-empted sweep can be rerun as a whole: finished jobs are
  skipped, the others continue);
- without a checkpoint: refuses, naming the folder and ``overwrite=true``.
``overwrite=true`` starts the run over in that folder: its checkpoints and exports are removed
first.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from numbers import Real
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

# What a run writes that a fresh run in the same folder replaces (tensorboard/ and .hydra/
# are histories and stay).
EXPORTS = ("sae", "metrics.json", "eval.json", "eval", "feature_density.png")
CHECKPOINTS = "checkpoints"


def _invalid(key: str, value: Any, rule: str) -> ValueError:
    return ValueError(f"{key}={value!r} is invalid: {rule}.")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_run_config(cfg: DictConfig) -> None:
    """The root and ``trainer`` keys a run uses: each bad value names its key and the rule."""
    get = lambda key, default=None: OmegaConf.select(cfg, key, default=default)  # noqa: E731
    if not _is_int(get("seed", 0)):
        raise _invalid("seed", get("seed"), "it must be an integer")
    eval_tokens = get("eval_tokens", 0)
    if eval_tokens is not None and (not _is_int(eval_tokens) or eval_tokens < 0):
        raise _invalid(
            "eval_tokens",
            eval_tokens,
            "it must be an integer >= 0 (0 = no end-of-run evaluation) or null (data.val_tokens)",
        )
    every = get("checkpoint_every_n_steps", 1)
    if not _is_int(every) or every <= 0:
        raise _invalid(
            "checkpoint_every_n_steps",
            every,
            "it must be an integer > 0 (steps between checkpoints)",
        )
    for key in ("export", "overwrite"):
        if not isinstance(get(key, False), bool):
            raise _invalid(key, get(key), "it must be true or false")
    if get("overwrite", False) and get("resume"):
        raise ValueError(
            f"overwrite=true starts the run over, resume={get('resume')} continues it: use one "
            "of the two."
        )
    trainer = get("trainer")
    if trainer is None:
        return
    max_steps, max_epochs = get("trainer.max_steps", -1), get("trainer.max_epochs", None)
    if not _is_int(max_steps) or (max_steps <= 0 and max_steps != -1):
        raise _invalid(
            "trainer.max_steps",
            max_steps,
            "it must be an integer > 0 (or -1 with trainer.max_epochs > 0)",
        )
    if max_epochs is not None and (
        not _is_int(max_epochs) or (max_epochs <= 0 and max_epochs != -1)
    ):
        raise _invalid("trainer.max_epochs", max_epochs, "it must be an integer > 0, or -1")
    if max_steps == -1 and (max_epochs is None or max_epochs == -1):
        raise ValueError(
            "trainer.max_steps=-1 with trainer.max_epochs unset or -1 would train forever: set "
            "trainer.max_steps > 0 (or trainer.max_epochs > 0)."
        )
    for key in ("log_every_n_steps", "accumulate_grad_batches"):
        value = get(f"trainer.{key}", 1)
        if not _is_int(value) or value <= 0:
            raise _invalid(f"trainer.{key}", value, "it must be an integer > 0")
    interval = get("trainer.val_check_interval", 1)
    if interval is not None and not _positive_count_or_fraction(interval, allow_zero=False):
        raise _invalid(
            "trainer.val_check_interval",
            interval,
            "it must be an integer > 0 or a fraction in (0, 1]",
        )
    limit = get("trainer.limit_val_batches", 1.0)
    if limit is not None and not _positive_count_or_fraction(limit, allow_zero=True):
        raise _invalid(
            "trainer.limit_val_batches", limit, "it must be an integer >= 0 or a fraction in [0, 1]"
        )
    clip = get("trainer.gradient_clip_val", None)
    if clip is not None and (
        isinstance(clip, bool) or not isinstance(clip, Real) or not math.isfinite(clip) or clip < 0
    ):
        raise _invalid(
            "trainer.gradient_clip_val", clip, "it must be a finite number >= 0, or null"
        )


def _positive_count_or_fraction(value: Any, allow_zero: bool) -> bool:
    if isinstance(value, bool) or not isinstance(value, Real):
        return False
    if _is_int(value):
        return value > 0 or (allow_zero and value == 0)
    return math.isfinite(value) and (0 < value <= 1 or (allow_zero and value == 0))


# --- the run folder --------------------------------------------------------------------------
def exports_in(output_dir: Path) -> list[str]:
    return [name for name in EXPORTS if (Path(output_dir) / name).exists()]


def check_run_folder(
    output_dir: Path, checkpoint_step: int | None, max_steps: int, overwrite: bool
) -> dict[str, Any] | None:
    """What to do with what ``output_dir`` already holds, given the step of the checkpoint the
    run would resume from (None: none). Returns the finished run's metrics when there is
    nothing to do; raises when continuing would overwrite a finished run; else None."""
    output_dir = Path(output_dir)
    found = exports_in(output_dir)
    if not found or overwrite:
        return None
    if checkpoint_step is not None and (max_steps == -1 or checkpoint_step < max_steps):
        return None  # an unfinished run (or one being extended): resume as always
    listing = ", ".join(found)
    if checkpoint_step is not None and (output_dir / "metrics.json").is_file():
        log.warning(
            "%s already holds this finished run (%s; checkpoint at step %d = trainer.max_steps): "
            "nothing to do. Raise trainer.max_steps to train it further, or pass overwrite=true "
            "to train it again from step 0",
            output_dir,
            listing,
            checkpoint_step,
        )
        return json.loads((output_dir / "metrics.json").read_text())
    raise FileExistsError(
        f"{output_dir} already holds a finished run ({listing}) and no checkpoint to continue "
        "from: training into it would overwrite it. Choose another folder (hydra.run.dir=...), "
        "or pass overwrite=true to replace it"
    )


def clear_run_folder(output_dir: Path) -> None:
    """``overwrite=true``: remove the checkpoints and exports of the run in ``output_dir``."""
    output_dir = Path(output_dir)
    removed = []
    for name in (CHECKPOINTS, *EXPORTS):
        path = output_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists() or path.is_symlink():
            path.unlink(missing_ok=True)
        else:
            continue
        removed.append(name)
    if removed:
        log.warning("overwrite=true: removed %s from %s", ", ".join(removed), output_dir)
