"""The LightningModule shared by every SAE family.

It owns optimisation: Adam with the family's defaults, the learning-rate and sparsity schedules,
the activation normalisation scale (estimated once on fit start, saved in checkpoints, folded in
at export), the decoder constraint around the optimiser step, and dead-latent tracking.
Lightning owns devices, precision, gradient clipping, accumulation, checkpointing and logging.

Distributed: the scale and the data-dependent init are computed on every rank from the same
first tokens and then taken from rank 0 (``broadcast``), so replicas start identical by
construction; under ``trainer=fsdp`` the SAE is sharded in ``configure_model`` (``sharding.py``).
A module can also be a member of a ``MultiSAELit`` (``multi.py``): it then logs through its
parent under ``<member name>/``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import Tensor

from saelab.metrics import FVU, L0, FeatureDensity, RelativeReconstructionBias, density_summary
from saelab.sae import SAE

from . import schedules, sharding


def clip_token_norms(x: Tensor, clip: float) -> Tensor:
    """Rows of x [B, d] with norm above ``clip`` x the batch's median row norm, scaled down to it."""
    norms = x.norm(dim=-1, keepdim=True)
    return x * (clip * norms.median() / norms.clamp_min(1e-12)).clamp(max=1.0)


class SAELitModule(pl.LightningModule):
    """Subclasses set ``sae_class`` and ``config_class`` (the family's flat Hydra schema)."""

    sae_class: ClassVar[type[SAE]]
    config_class: ClassVar[type]

    def __init__(self, **config):
        super().__init__()
        self.cfg = self.config_class(**config)  # validates every field
        self.save_hyperparameters(dataclasses.asdict(self.cfg))
        sae_fields = {f.name for f in dataclasses.fields(self.sae_class.config_class)}
        self.sae = self.sae_class(
            self.sae_class.config_class(**{k: v for k, v in config.items() if k in sae_fields})
        )
        d_sae = self.sae.d_sae
        # Normalisation scale s; 0 means "not estimated yet". A buffer, so checkpoints carry it.
        self.register_buffer("activation_scale", torch.tensor(0.0))
        self.register_buffer("tokens_since_fired", torch.zeros(d_sae, dtype=torch.long))
        self.val_l0, self.val_fvu = L0(), FVU(self.sae.d_in)
        self.val_density, self.val_bias = FeatureDensity(d_sae), RelativeReconstructionBias()
        self._dead_window = self.cfg.dead_tokens_window
        self._tokens_per_step = 0
        # Set by MultiSAELit for its members; kept out of nn.Module's registry on purpose (the
        # parent is not a submodule of its member: that would be a cycle).
        self.__dict__["_log_parent"], self.__dict__["log_name"] = None, ""

    # --- logging ----------------------------------------------------------------------------
    def attach_to(self, parent: pl.LightningModule, name: str) -> None:
        """Make this module a member of ``parent``: its logs become ``<name>/<tag>``."""
        self.__dict__["_log_parent"], self.__dict__["log_name"] = parent, name

    def tag(self, name: str) -> str:
        return f"{self.log_name}/{name}" if self.log_name else name

    def log(self, name: str, value: Any, *args, **kwargs) -> None:
        parent = self.__dict__["_log_parent"]
        if parent is not None:  # a member: Lightning only tracks hooks of the root module
            return parent.log(self.tag(name), value, *args, **kwargs)
        return super().log(name, value, *args, **kwargs)

    # --- set-up -----------------------------------------------------------------------------
    def total_steps(self) -> int:
        return max(1, int(self.trainer.estimated_stepping_batches))

    def configure_model(self) -> None:
        strategy = self.trainer.strategy
        if isinstance(strategy, ModelParallelStrategy):  # trainer=fsdp
            sharding.shard(self.sae, strategy.device_mesh["data_parallel"])

    def on_fit_start(self) -> None:
        dm = self.trainer.datamodule
        world = self.trainer.world_size
        self._tokens_per_step = dm.batch_size * world * self.trainer.accumulate_grad_batches
        self._dead_window = min(
            self.cfg.dead_tokens_window, max(1, self.total_steps() * self._tokens_per_step // 10)
        )
        if self.activation_scale > 0:  # restored from a checkpoint: never re-estimate
            return
        # Every rank reads the same deterministic first tokens; rank 0's results are then
        # broadcast anyway, so replicas agree even if two devices round differently.
        sample = dm.sample_activations(self.cfg.normalization_tokens).to(self.device, torch.float32)
        if self.cfg.normalize_activations:
            scale = sample.pow(2).sum(-1).mean().sqrt()
            if not torch.isfinite(scale) or scale <= 0:
                raise ValueError(
                    f"Cannot normalise activations: their mean squared norm is {scale.item() ** 2!r}. "
                    "Check the data source for NaNs/zeros, or set sae.normalize_activations=false."
                )
        else:
            scale = torch.tensor(1.0)
        scale = self.trainer.strategy.broadcast(scale.cpu(), src=0)
        self.activation_scale.copy_(scale)
        with sharding.editable(self, "sae"):
            self.init_from_data(sample / self.activation_scale)
        self._broadcast_from_rank_zero()

    def _broadcast_from_rank_zero(self) -> None:
        """Replicated (DDP) parameters and buffers := rank 0's. DDP synchronises only at wrap
        time, which is before on_fit_start; sharded ones were already scattered from rank 0."""
        if not (dist.is_available() and dist.is_initialized()) or self.trainer.world_size == 1:
            return
        if sharding.is_sharded(self.sae):
            return
        for tensor in [*self.sae.parameters(), *self.sae.buffers()]:
            dist.broadcast(tensor.data, src=0)

    def init_from_data(self, x: Tensor) -> None:
        """Family hook for data-dependent initialisation (x already normalised)."""

    def optimizer_group(self) -> dict[str, Any]:
        """This SAE's Adam parameter group: its parameters and hyper-parameters. A group, so a
        MultiSAELit can give every member its own in one optimiser (Adam is per-parameter, so
        that is exactly one Adam per SAE)."""
        cfg = self.cfg
        return {
            "params": list(self.sae.parameters()),
            "lr": cfg.lr,
            "betas": (cfg.adam_beta1, cfg.adam_beta2),
            "eps": cfg.adam_eps,
        }

    def lr_lambda(self) -> Callable[[int], float]:
        cfg = self.cfg
        total = self.total_steps()
        warmup = schedules.effective_warmup(cfg.lr_warmup_steps, total, cfg.max_warmup_fraction)

        def factor(step: int) -> float:
            return schedules.lr_factor(
                step, total, warmup, cfg.lr_warmup_start, cfg.lr_decay_fraction
            )

        return factor

    def configure_optimizers(self):
        optimizer = torch.optim.Adam([self.optimizer_group()])
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self.lr_lambda())
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    # --- training ---------------------------------------------------------------------------
    def normalize(self, x: Tensor) -> Tensor:
        return x / self.activation_scale

    def sparsity_scale(self) -> float:
        warmup = schedules.effective_warmup(
            self.cfg.sparsity_warmup_steps, self.total_steps(), self.cfg.max_warmup_fraction
        )
        return schedules.sparsity_factor(self.global_step, warmup)

    def dead_mask(self) -> Tensor:
        return self.tokens_since_fired >= self._dead_window

    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        x = self.normalize(batch)
        if self.cfg.token_norm_clip is not None:
            x = clip_token_norms(x, self.cfg.token_norm_clip)
        scale = self.sparsity_scale()
        dead = self.dead_mask()
        out = self.sae(x, sparsity_scale=scale, dead_mask=dead, **self.sae_kwargs())
        loss = out.loss
        self.track_firing(out.feature_acts)
        logs = {f"train/loss/{k}": v.detach() for k, v in out.losses.items()}
        logs.update({f"train/{k}": v for k, v in out.metrics.items()})
        logs["train/loss"] = loss.detach()
        logs["train/dead_fraction"] = dead.float().mean()
        logs["train/sparsity_scale"] = scale
        self.log_dict(logs, on_step=True, on_epoch=False)
        self.log("l0", out.metrics["l0"], prog_bar=True, logger=False)
        self.after_training_step(out)
        return loss

    def sae_kwargs(self) -> dict[str, Any]:
        """Family hook: extra keyword arguments for this training step's SAE forward."""
        return {}

    def after_training_step(self, out) -> None:
        """Family hook, e.g. for extra statistics or buffers driven by the forward's metrics."""

    @torch.no_grad()
    def track_firing(self, feature_acts: Tensor) -> None:
        # Activations are >= 0 in every family (tests/sae/test_families.py), so "fired" is a
        # positive column max: one reduction, where (f != 0).any(0) first writes a [B, d_sae]
        # boolean tensor (95 -> 17 ms at 4096 x 8192 on one CPU core, docs/speed.md).
        fired = feature_acts.amax(0) > 0
        # Sum over DDP ranks: a latent is alive if it fired on any rank.
        fired = self.trainer.strategy.reduce(fired.float(), reduce_op="sum") > 0
        self.tokens_since_fired += feature_acts.shape[0] * self.trainer.world_size
        self.tokens_since_fired.masked_fill_(fired, 0)  # a boolean index would sync a GPU

    def on_before_optimizer_step(self, optimizer) -> None:
        if self.sae.unit_norm_decoder:
            self.sae.remove_parallel_decoder_grad()

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        self.after_optimizer_step()

    def after_optimizer_step(self) -> None:
        if self.sae.unit_norm_decoder:
            self.sae.normalize_decoder()

    # --- validation -------------------------------------------------------------------------
    def validation_step(self, batch: Tensor, batch_idx: int) -> None:
        x = self.normalize(batch)
        out = self.sae(x)
        self.val_l0.update(out.feature_acts)
        self.val_fvu.update(x, out.x_hat)
        self.val_density.update(out.feature_acts)
        self.val_bias.update(x, out.x_hat)

    def on_validation_epoch_end(self) -> None:
        density = self.val_density.compute()
        logs = {
            "val/l0": self.val_l0.compute(),
            "val/fvu": self.val_fvu.compute(),
            "val/relative_reconstruction_bias": self.val_bias.compute(),
            **{f"val/{k}": v for k, v in density_summary(density).items()},
        }
        self.log_dict(logs)
        self.log_histogram("val/log10_feature_density", torch.log10(density + 1e-10))
        for metric in (self.val_l0, self.val_fvu, self.val_density, self.val_bias):
            metric.reset()

    def log_histogram(self, tag: str, values: Tensor) -> None:
        if self.trainer.sanity_checking:
            return
        for logger in self.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_histogram(
                    self.tag(tag), values.detach().cpu(), self.global_step
                )

    # --- export -----------------------------------------------------------------------------
    def export_saes(self) -> dict[str, SAE]:
        """Every SAE this module trains, by member name ("" for a single SAE)."""
        return {"": self.export_sae()}

    def export_sae(self) -> SAE:
        """A copy of the SAE that acts on RAW activations (normalisation scale folded in).
        Under trainer=fsdp this gathers the shards: call it on every rank."""
        sae = sharding.plain_copy(self.sae).eval()
        if self.activation_scale > 0:
            sae.fold_activation_scale(float(self.activation_scale))
        return sae
