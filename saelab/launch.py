"""DDP ranks that Lightning starts itself (``trainer=ddp`` on one machine), under Hydra.

Lightning starts ranks 1..N-1 by re-running ``python train.py <the same argv>``. Under Hydra
that breaks twice: in a multirun the argv holds ``-m`` and the sweep, so every rank would run
the whole sweep; and a re-run resolves ``${now:...}`` in the run folder again. So before
fitting, the launching process records in the environment (which the ranks inherit) the
composed overrides of THIS job and its resolved run folder; ``train.py`` sees the variable in a
started rank and composes exactly that config instead of parsing argv (``launched_job``).

After the run, ``launch_scope`` removes what the launch left in the environment
(MASTER_PORT, LOCAL_RANK, ...) and ends the process group, so the next job of a multirun
launches its own ranks instead of believing it was started by an external launcher.
Ranks started by an external launcher (torchrun, srun, submitit) are left alone: each of them
runs Hydra itself, and ``SameRunFolder`` checks that they agree on the run folder.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch.distributed as dist
from omegaconf import DictConfig

ENV = "SAELAB_DDP_JOB"
LAUNCH_VARS = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE", ENV)


def _job_payload(cfg: DictConfig) -> dict[str, Any] | None:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    hydra = HydraConfig.get()
    main = [
        s.path for s in hydra.runtime.config_sources if s.provider == "main" and s.schema == "file"
    ]
    if not main:
        return None
    overrides = [o for o in hydra.overrides.task if not o.lstrip("+~").startswith("output_dir=")]
    return {
        "config_dir": main[0],
        "config_name": hydra.job.config_name,
        "overrides": [*overrides, f"output_dir={Path(cfg.output_dir).resolve()}"],
    }


@contextmanager
def launch_scope(cfg: DictConfig) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in LAUNCH_VARS}
    launcher = saved["LOCAL_RANK"] is None  # nobody started us as a rank: we may start ranks
    payload = _job_payload(cfg) if launcher else None
    if payload is not None:
        os.environ[ENV] = json.dumps(payload)
    try:
        yield
    finally:
        if launcher:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            if dist.is_available() and dist.is_initialized():
                dist.destroy_process_group()


def launched_job() -> dict[str, Any] | None:
    """The job a Lightning-started DDP rank must run, or None in any other process."""
    if os.environ.get("LOCAL_RANK", "0") == "0" or ENV not in os.environ:
        return None
    return json.loads(os.environ[ENV])


def compose_job(job: dict[str, Any]) -> DictConfig:
    from hydra import compose, initialize_config_dir

    from saelab.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=job["config_dir"], version_base="1.3"):
        return compose(config_name=job["config_name"], overrides=job["overrides"])


class SameRunFolder(pl.Callback):
    """Fail early, on every rank, if the ranks resolved different run folders (externally
    launched ranks each run Hydra: ``${now:...}`` can differ by a second)."""

    def __init__(self, output_dir: Path):
        self.output_dir = str(Path(output_dir).resolve())

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if trainer.world_size == 1:
            return
        rank0 = trainer.strategy.broadcast(self.output_dir, src=0)
        if not trainer.strategy.reduce_boolean_decision(rank0 == self.output_dir, all=True):
            raise RuntimeError(
                f"the DDP ranks resolved different run folders (rank 0: {rank0}, rank "
                f"{trainer.global_rank}: {self.output_dir}). When ranks are started by an external "
                "launcher (torchrun, srun), give them one folder: hydra.run.dir=outputs/<name> "
                "(docs/scaling.md)"
            )
