"""Checkpoints that can be trusted after a crash, and resuming from them exactly.

- ``AtomicCheckpointIO`` writes ``<name>.tmp``, fsyncs, renames it over the final name and
  fsyncs the folder: a kill at any moment leaves the previous complete checkpoint or the new
  one, never a truncated file under the final name. Every checkpoint is checksummed and the
  previous one kept (``checkpoint_files.py``). Loads with ``weights_only=True``.
- ``RunState`` adds to every checkpoint what Lightning does not keep: the run's resolved config
  (so a resume with different settings is refused, naming the keys) and the RNG states.
- ``resume_checkpoint`` decides where a run starts: the checkpoint of ``resume=<run folder>``,
  or of the run folder itself when it already has one (a rerun of a pre-empted job), else None.

Model, optimiser, LR-scheduler, loop counters and the data position (``ActivationSource``) are
in Lightning's own checkpoint; together with these, a resumed run continues bit for bit.
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.fabric.plugins import TorchCheckpointIO

from saelab.fileio import HashingWriter, write_error

from .checkpoint_files import (
    LAST,
    METADATA,
    OK,
    UNCHECKED,
    CheckpointError,
    check_registry,
    commit,
    find_verified,
    non_finite_tensors,
    verify,
)

log = logging.getLogger(__name__)
CHECKPOINT = Path("checkpoints") / LAST

# Keys a resumed run may change: where and how it runs, not what it computes. Anything else
# (the SAE, the data, the seed, precision, clipping, ...) must match the checkpoint.
MAY_DIFFER = (
    "resume",
    "overwrite",
    "output_dir",
    "checkpoint_every_n_steps",
    "eval_tokens",
    "export",
    "logger",
    "trainer.max_steps",
    "trainer.devices",
    "trainer.num_nodes",
    "trainer.strategy",
    "trainer.accelerator",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.log_every_n_steps",
    "trainer.val_check_interval",
    "trainer.limit_val_batches",
    "trainer.default_root_dir",
    "data.cache_dir",
    "data.progress",
    "data.prefetch_batches",
    "data.device",
    "data.verify_checksums",
    "data.lm_batch_size",
)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes ``<name>.tmp`` while hashing it, fsyncs, then commits it (``checkpoint_files``:
    digest recorded, the current one kept as ``previous.ckpt``, the new one renamed in).
    Refuses to write weights or optimiser states holding NaN/inf, and to load a checkpoint
    whose checksum does not match (or that holds NaN/inf)."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path, storage_options: Any = None
    ) -> None:
        path = Path(path)
        bad = non_finite_tensors(checkpoint)
        if bad:
            raise FloatingPointError(
                f"refusing to write {path}: {', '.join(bad[:5])} hold NaN/inf. Training "
                "diverged; the last good checkpoint is kept (lower sae.lr, check the data)"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        check_registry(path.parent)
        tmp = path.with_name(path.name + ".tmp")
        writer = None
        try:
            with open(tmp, "wb") as f:
                writer = HashingWriter(f)
                torch.save(checkpoint, writer)
                f.flush()
                os.fsync(f.fileno())
        except BaseException as error:
            tmp.unlink(missing_ok=True)
            if isinstance(error, (OSError, RuntimeError)):
                raise write_error(path, (writer and writer.error) or error) from error
            raise
        commit(tmp, path, writer.hexdigest(), checkpoint.get("global_step"))

    def load_checkpoint(
        self, path, map_location: Any = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        path = Path(path)
        status = verify(path)
        if status not in (OK, UNCHECKED):
            raise CheckpointError(f"cannot load the checkpoint {path}: {status}")
        # Everything saelab puts in a checkpoint is tensors and plain containers: never unpickle code.
        try:
            checkpoint = torch.load(path, map_location=map_location or "cpu", weights_only=True)
        except Exception as error:  # truncated, garbled or not weights-only: torch names no file
            raise CheckpointError(
                f"cannot load the checkpoint {path}: {type(error).__name__}: {error}"
            ) from error
        bad = non_finite_tensors(checkpoint)
        if bad:
            raise CheckpointError(
                f"the checkpoint {path} holds NaN/inf in {', '.join(bad[:5])}: it is corrupt"
            )
        return checkpoint


# --- RNG states in plain types (so they load with weights_only=True) ------------------------
def capture_rng() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(_tuples(state["python"]))
    torch.set_rng_state(state["torch"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(value):
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


class RunState(pl.Callback):
    """Stores the resolved config and the RNG states in every checkpoint; restores the RNG
    states when training restarts (rank 0's states: every rank seeds identically)."""

    def __init__(self, config: dict[str, Any]):
        self.config = config
        self._pending_rng: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"config": self.config, "rng": capture_rng()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending_rng = state_dict.get("rng")

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._pending_rng is not None:
            restore_rng(self._pending_rng)
            self._pending_rng = None


# --- where a run starts --------------------------------------------------------------------
def find_checkpoint(run_dir: Path) -> Path | None:
    """The run folder's newest checkpoint that verifies (``checkpoint_files.find_verified``):
    ``last.ckpt``, else ``previous.ckpt`` with a warning; a file, or a folder (trainer=fsdp).
    None when there is none; a ``CheckpointError`` naming the files when all are corrupt."""
    return find_verified(Path(run_dir) / CHECKPOINT)


def checkpoint_step(path: Path) -> int | None:
    """The global step a checkpoint was saved at (reads only its metadata)."""
    return _metadata(path).get("global_step")


def _metadata(path: Path) -> dict[str, Any]:
    meta = path / METADATA if path.is_dir() else path
    # mmap: read only the small metadata, not every tensor, even for a huge SAE.
    return torch.load(meta, map_location="cpu", weights_only=True, mmap=path.is_file())


def checkpoint_config(path: Path) -> dict[str, Any] | None:
    """The config a checkpoint was trained with (None for checkpoints from older saelab)."""
    return _metadata(path).get("callbacks", {}).get(RunState.__qualname__, {}).get("config")


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict) and data:
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: data}


def _may_differ(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in MAY_DIFFER)


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    old, new = _flatten(saved), _flatten(current)
    return [
        f"{k}: checkpoint has {old.get(k)!r}, this run has {new.get(k)!r}"
        for k in sorted(old.keys() | new.keys())
        if not _may_differ(k) and old.get(k) != new.get(k)
    ]


def resume_checkpoint(run_dir: Path, config: dict[str, Any], explicit: bool) -> Path | None:
    """The checkpoint this run continues from, after checking it was trained with the same
    config; None for a fresh run. ``explicit``: the user asked for it (``resume=``)."""
    path = find_checkpoint(run_dir)
    if path is None:
        if explicit:
            raise FileNotFoundError(
                f"resume={run_dir}: there is no checkpoint at {Path(run_dir) / CHECKPOINT}. Either "
                "the folder is not a saelab run folder, or the run stopped before its first "
                "checkpoint (every checkpoint_every_n_steps steps, or on SIGTERM/SIGINT); start "
                "the run again without resume="
            )
        return None
    saved = checkpoint_config(path)
    if saved is not None:
        differences = config_differences(saved, config)
        if differences:
            raise ValueError(
                f"cannot resume the run in {run_dir}: its checkpoint was trained with another "
                f"config ({'; '.join(differences[:8])}{'; ...' if len(differences) > 8 else ''}). "
                "Resume with the run's original settings (see its .hydra/overrides.yaml), or start "
                "a new run in a new folder"
            )
        if saved.get("trainer", {}).get("max_steps") != config.get("trainer", {}).get("max_steps"):
            log.warning(
                "resuming with trainer.max_steps=%s (the run started with %s): the "
                "schedules follow the new length from here on",
                config["trainer"]["max_steps"],
                saved["trainer"]["max_steps"],
            )
    log.info("resuming from %s", path)
    return path
