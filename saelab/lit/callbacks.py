"""Callbacks that are not part of any one family's optimisation."""

from __future__ import annotations

import lightning.pytorch as pl

from saelab.metrics import FeatureRecovery

from .sharding import full_tensor


class FeatureRecoveryCallback(pl.Callback):
    """On data with known true features (``datamodule.true_features``), log after each validation
    the mean max cosine similarity (MMCS) of true features to decoder rows and the fraction of true
    features recovered (best cosine > ``threshold``), for every SAE the module trains."""

    def __init__(self, threshold: float = 0.9):
        self.threshold = threshold

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        true_features = getattr(trainer.datamodule, "true_features", None)
        if true_features is None or trainer.sanity_checking:
            return
        members = getattr(pl_module, "members", None) or {"": pl_module}
        for member in members.values():
            metric = FeatureRecovery(true_features, self.threshold).to(pl_module.device)
            metric.update(full_tensor(member.sae.W_dec))  # whole rows, also under trainer=fsdp
            member.log_dict({f"val/{k}": v for k, v in metric.compute().items()})
