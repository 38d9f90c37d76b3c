"""What the run folder already holds, checked before any work (the config's keys are checked by
their schemas: saelab/run_config.py and each group's dataclass).

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
import shutil
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# What a run writes that a fresh run in the same folder replaces (tensorboard/ and .hydra/
# are histories and stay).
EXPORTS = ("sae", "metrics.json", "eval.json", "eval", "feature_density.png")
CHECKPOINTS = "checkpoints"


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
