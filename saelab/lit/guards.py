"""Stop a run whose numbers stopped being numbers, before it saves or exports them.

``NonFiniteGuard`` checks the training loss after every step and the weights every
``weight_check_every`` steps, before every checkpoint is written and at the end of training.
On a NaN or infinity it raises ``NonFiniteError`` naming the step, the loss terms or parameters
that went bad and what to do. Raising there means: the checkpoint about to be written is not
written (the last good one stays), ``trainer.fit`` does not return, so nothing is validated or
exported, and ``train.py`` exits non-zero.

Cost: one reduction of the (scalar) loss per step and, every ``weight_check_every`` steps, one
``isfinite().all()`` per parameter (a pass over the weights, which a step reads several times
anyway). On a CPU the loss check reads the flag every step; on an accelerator the flag stays on
the device and is read at the weight checks, before checkpoints and at the end (so detection
may come some steps late there, but never after a save). With several ranks every rank takes
the same decision (one all-reduce of a flag), so they stop together.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor

from .checkpointing import checkpoint_step, find_checkpoint


class NonFiniteError(FloatingPointError):
    """Training produced NaN/inf; the message names the step, the culprit and the fix."""


class NonFiniteGuard(pl.Callback):
    def __init__(self, checkpoint_path: Path | None = None, weight_check_every: int = 100):
        self.checkpoint_path = Path(checkpoint_path) if checkpoint_path else None
        self.weight_check_every = max(1, int(weight_check_every))
        self._first_bad_step: Tensor | None = None  # device-side: first step with a bad loss

    # --- hooks ---------------------------------------------------------------------------
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        step = trainer.global_step
        if loss is not None:
            bad = ~torch.isfinite(loss.detach())
            if self._first_bad_step is None:
                self._first_bad_step = torch.full((), -1, dtype=torch.long, device=bad.device)
            self._first_bad_step = torch.where(
                bad & (self._first_bad_step < 0), step, self._first_bad_step
            )
        if pl_module.device.type == "cpu" or step % self.weight_check_every == 0:
            self._check(trainer, pl_module, weights=step % self.weight_check_every == 0)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        # Called on every rank before anything is written: raising here writes nothing.
        self._check(trainer, pl_module, weights=True, saving=True)

    def on_train_end(self, trainer, pl_module) -> None:
        self._check(trainer, pl_module, weights=True)

    # --- checks --------------------------------------------------------------------------
    def _check(self, trainer, pl_module, weights: bool, saving: bool = False) -> None:
        loss_step = int(self._first_bad_step) if self._first_bad_step is not None else -1
        bad_params = _non_finite_parameters(pl_module) if weights else []
        bad = loss_step >= 0 or bool(bad_params)
        if trainer.world_size > 1:
            bad = trainer.strategy.reduce_boolean_decision(bad, all=False)
        if bad:
            raise NonFiniteError(
                self._message(trainer, pl_module, loss_step, bad_params, saving)
            ) from None

    def _message(self, trainer, pl_module, loss_step, bad_params, saving) -> str:
        step = trainer.global_step
        if loss_step >= 0:
            terms = _bad_terms(getattr(pl_module, "loss_terms", {}))
            what = f"the training loss became non-finite at step {loss_step}" + (
                f" ({', '.join(terms)})" if terms else ""
            )
            if bad_params:
                what += f"; at step {step} {_list(bad_params)} hold NaN/inf"
        elif bad_params:
            what = f"at step {step} the weights went non-finite: {_list(bad_params)} hold NaN/inf"
        else:
            what = f"another rank saw a non-finite loss or weight at step {step}"
        kept = self._last_good()
        lrs = _lr_keys(pl_module)
        return (
            f"Training stopped: {what}. "
            + ("The checkpoint due now was NOT written. " if saving else "")
            + f"{kept} Nothing was exported (no sae/, no metrics.json). "
            + f"What to do: lower the learning rate ({lrs}), or raise the clipping "
            + "(trainer.gradient_clip_val), and check the data for NaN/inf "
            + "(data.verify_checksums=always); then start a new run (a resume replays the same "
            + "steps and diverges again)."
        )

    def _last_good(self) -> str:
        if self.checkpoint_path is None:
            return ""
        try:
            found = find_checkpoint(self.checkpoint_path.parent.parent)
            if found is None:
                return "No checkpoint had been written."
            return f"The last good checkpoint is {found} (step {checkpoint_step(found)})."
        except Exception as error:  # explaining must never hide the real problem
            return f"(The checkpoint folder could not be read: {error}.)"


def _local(t: Tensor) -> Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


@torch.no_grad()
def _non_finite_parameters(module: torch.nn.Module) -> list[str]:
    named = list(module.named_parameters())
    if not named:
        return []
    flags = torch.stack([torch.isfinite(_local(p)).all() for _, p in named])
    if bool(flags.all()):
        return []
    return [
        f"{name} ({int((~torch.isfinite(_local(p))).sum())} of {_local(p).numel()} values)"
        for (name, p), ok in zip(named, flags.tolist())
        if not ok
    ]


def _bad_terms(metrics: dict[str, Any]) -> list[str]:
    out = []
    for key, value in metrics.items():
        if "train/loss" not in key:
            continue
        number = float(value)
        if not math.isfinite(number):
            out.append(f"{key} = {number}")
    return out


def _lr_keys(pl_module) -> str:
    members = getattr(pl_module, "members", None)
    if members:
        return ", ".join(f"multi.saes.{name}.lr={m.cfg.lr:g}" for name, m in members.items())
    cfg = getattr(pl_module, "cfg", None)
    return f"sae.lr={cfg.lr:g}" if cfg is not None else "sae.lr"


def _list(names: list[str]) -> str:
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
