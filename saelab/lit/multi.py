"""Several SAEs trained in ONE pass over the activation stream (``multi.saes`` in the config).

A sweep over sparsity coefficients, learning rates or families usually reads (or computes) the
same activations once per SAE; here every batch feeds all of them. Each member is an ordinary
family LightningModule and keeps everything of its own: normalisation scale, data-dependent
init, decoder constraint, dead-latent window, learning rate, Adam hyper-parameters and
schedules. What it shares is the data and the step counter.

Why one optimiser: Lightning counts every optimiser step as a global step, so one optimiser
per member would advance ``global_step`` (and stop ``max_steps``) N times too fast. Adam is
per-parameter, so one Adam with one parameter GROUP per member (its own lr, betas, eps) and a
LambdaLR with one schedule per group is exactly N independent Adams. The summed loss gives each
member's parameters the gradient of that member's loss alone (they share no parameter), and
gradient clipping is done per member (``configure_gradient_clipping``), as if it trained alone.
So a member ends with the same weights as the same SAE trained alone (tests/scale/test_multi.py).

A member logs as ``<name>/<tag>`` (``<name>/train/loss``, ``<name>/val/fvu``).
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch import Tensor

from saelab.sae import SAE

from . import sharding
from .base import SAELitModule, adam


class MultiSAELit(pl.LightningModule):
    def __init__(self, members: dict[str, SAELitModule]):
        super().__init__()
        if not members:
            raise ValueError("multi.saes is empty: name at least one SAE (docs/scaling.md)")
        for name in members:
            if not name or "/" in name:
                raise ValueError(
                    f"multi.saes.{name!r}: a member name must be non-empty and have no '/'"
                )
        self.members = torch.nn.ModuleDict(members)
        for name, member in self.members.items():
            member.attach_to(self, name)
        d_in = {m.sae.d_in for m in members.values()}
        if len(d_in) != 1:
            raise ValueError(
                f"multi.saes: every SAE reads the same data, but their d_in differ ({d_in})"
            )
        self.save_hyperparameters(
            {"members": {name: dict(m.hparams) for name, m in members.items()}}
        )

    # Lightning hands its Trainer only to DIRECT LightningModule children; members sit in a
    # ModuleDict, so pass it on ourselves (they use self.trainer like any root module).
    def _set_trainer(self, trainer) -> None:
        pl.LightningModule.trainer.fset(self, trainer)
        for member in self.__dict__.get("_modules", {}).get("members", {}).values():
            member.trainer = trainer

    trainer = property(pl.LightningModule.trainer.fget, _set_trainer)

    # --- set-up: each member as if alone ---------------------------------------------------
    def configure_model(self) -> None:
        for member in self.members.values():
            member.configure_model()

    def on_fit_start(self) -> None:
        for member in self.members.values():
            member.on_fit_start()

    def configure_optimizers(self):
        members = list(self.members.values())
        # "name" labels each group's learning rate in TensorBoard (lr-Adam/<member>[/<i>]).
        groups, schedules = [], []
        for name, m in self.members.items():
            for i, group in enumerate(m.optimizer_groups()):
                groups.append({**group, "name": name if i == 0 else f"{name}/{i}"})
                schedules.append(m.lr_lambda())
        sharded = any(sharding.is_sharded(m.sae) for m in members)
        optimizer = adam(groups, sharded, self.trainer.precision)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedules)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    # --- training ---------------------------------------------------------------------------
    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        loss = sum(member.training_step(batch, batch_idx) for member in self.members.values())
        self.loss_terms = {
            m.tag(k): v for m in self.members.values() for k, v in m.loss_terms.items()
        }
        return loss

    def configure_gradient_clipping(
        self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None
    ) -> None:
        if not gradient_clip_val:
            return
        for member in self.members.values():
            params = [p for p in member.sae.parameters() if p.grad is not None]
            if gradient_clip_algorithm == "value":
                torch.nn.utils.clip_grad_value_(params, gradient_clip_val)
            else:
                torch.nn.utils.clip_grad_norm_(params, gradient_clip_val)

    def on_before_optimizer_step(self, optimizer) -> None:
        for member in self.members.values():
            member.on_before_optimizer_step(optimizer)

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        for member in self.members.values():
            member.after_optimizer_step()

    # --- validation -------------------------------------------------------------------------
    def validation_step(self, batch: Tensor, batch_idx: int) -> None:
        for member in self.members.values():
            member.validation_step(batch, batch_idx)

    def on_validation_epoch_end(self) -> None:
        for member in self.members.values():
            member.on_validation_epoch_end()

    # --- export -----------------------------------------------------------------------------
    def export_saes(self) -> dict[str, SAE]:
        return {name: member.export_sae() for name, member in self.members.items()}
