"""The schemas of the root and ``trainer`` keys, as every other config group has one: a typo in
any key (``trainer.max_step=10``, ``eval_token=0``) or a wrong type fails when the config is
composed, naming the key; the value rules run before any work (``check``).

``TrainerConfig`` is Lightning's ``Trainer`` signature itself, every argument with Lightning's
default, so any Trainer argument is a ``trainer.*`` key (docs/scaling.md) and nothing else is.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from dataclasses import dataclass, field
from numbers import Real
from typing import Any

import lightning.pytorch as pl
from omegaconf import DictConfig, OmegaConf


def _invalid(key: str, value: Any, rule: str) -> ValueError:
    return ValueError(f"{key}={value!r} is invalid: {rule}.")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass
class RunConfig:
    """The root keys (conf/config.yaml says what each does); groups have their own schemas."""

    seed: int = 0
    layer: int = 12
    output_dir: str = "outputs"
    checkpoint_every_n_steps: int = 500
    resume: str | None = None
    overwrite: bool = False
    eval_tokens: int | None = None
    export: bool = True
    sae: Any = None
    data: Any = None
    model: Any = None
    site: Any = None
    trainer: Any = None
    logger: Any = None
    multi: Any = field(default_factory=dict)
    level: str | None = None
    """An experiment's sparsity point (conf/experiment/paper_pareto.yaml)."""
    pareto_values: dict[str, Any] | None = None
    """An experiment's knob value per level (conf/pareto/*.yaml)."""


def _trainer_fields() -> list[tuple[str, Any, Any]]:
    params = inspect.signature(pl.Trainer.__init__).parameters.values()
    fields = [("_target_", str, field(default="lightning.pytorch.Trainer"))]
    for p in params:
        if p.name == "self" or p.kind is not inspect.Parameter.KEYWORD_ONLY:
            continue
        fields.append((p.name, Any, field(default=p.default)))
    return fields


TrainerConfig = dataclasses.make_dataclass("TrainerConfig", _trainer_fields())
TrainerConfig.__doc__ = "Lightning's Trainer arguments (conf/trainer/*.yaml), with its defaults."


def check(cfg: DictConfig) -> None:
    """The value rules of the root and ``trainer`` keys: each bad value names its key."""
    get = lambda key, default=None: OmegaConf.select(cfg, key, default=default)  # noqa: E731
    eval_tokens = get("eval_tokens", 0)
    if eval_tokens is not None and eval_tokens < 0:
        raise _invalid(
            "eval_tokens",
            eval_tokens,
            "it must be an integer >= 0 (0 = no end-of-run evaluation) or null (data.val_tokens)",
        )
    every = get("checkpoint_every_n_steps", 1)
    if every <= 0:
        raise _invalid(
            "checkpoint_every_n_steps",
            every,
            "it must be an integer > 0 (steps between checkpoints)",
        )
    if get("overwrite", False) and get("resume"):
        raise ValueError(
            f"overwrite=true starts the run over, resume={get('resume')} continues it: use one "
            "of the two."
        )
    if get("trainer") is not None:
        _check_trainer(get)


def _check_trainer(get) -> None:
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
        if value is not None and (not _is_int(value) or value <= 0):
            raise _invalid(f"trainer.{key}", value, "it must be an integer > 0")
    interval = get("trainer.val_check_interval", 1)
    if interval is not None and not _count_or_fraction(interval, allow_zero=False):
        raise _invalid(
            "trainer.val_check_interval",
            interval,
            "it must be an integer > 0 or a fraction in (0, 1]",
        )
    limit = get("trainer.limit_val_batches", 1.0)
    if limit is not None and not _count_or_fraction(limit, allow_zero=True):
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


def _count_or_fraction(value: Any, allow_zero: bool) -> bool:
    if isinstance(value, bool) or not isinstance(value, Real):
        return False
    if _is_int(value):
        return value > 0 or (allow_zero and value == 0)
    return math.isfinite(value) and (0 < value <= 1 or (allow_zero and value == 0))
