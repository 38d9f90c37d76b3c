"""The LightningModule shared by every SAE family.

It owns optimisation: Adam with the family's defaults, the learning-rate and sparsity schedules,
the activation normalisation scale (estimated once on fit start, saved in checkpoints, folded in
at export), the decoder constraint around the optimiser step, dead-latent tracking and the
dense/sparse path choice. The family's loss, estimators and training state are its objective
(saelab/sae/objective.py), driven through the same few hooks for every family. Lightning owns
devices, precision, gradient clipping, accumulation, checkpointing and logging.

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
from saelab.sae.objective import Step, Sync
from saelab.sae.registry import Family

from . import schedules, sharding
from .sync import sync_for_run


def adam(groups: list[dict[str, Any]], sharded: bool, precision: str) -> torch.optim.Adam:
    """Adam over the parameter groups: the fused implementation (one pass per step, and none of
    the two [d_sae, d_in] temporaries the per-tensor one builds for its denominators, which
    dominate the transient memory of a wide SAE: docs/speed.md, "Real shapes") unless the parameters
    are FSDP shards, which it does not take, or the step runs under mixed precision, where
    Lightning refuses to clip a fused optimiser's gradients."""
    fused = not sharded and str(precision) not in ("16-mixed", "bf16-mixed")
    return torch.optim.Adam(groups, fused=fused)


class SAELitModule(pl.LightningModule):
    """One subclass per registered family (families.py) sets ``family``; ``config_class`` is the
    family's flat Hydra schema. ``self.sae`` is the inference SAE (what is exported),
    ``self.objective`` the family's training objective (its state is checkpointed, not
    exported)."""

    family: ClassVar[Family]
    config_class: ClassVar[type]

    def __init__(self, **config):
        super().__init__()
        self.cfg = self.config_class(**config)  # validates every field; the family's defaults
        self.save_hyperparameters(dataclasses.asdict(self.cfg))
        self.sae: SAE = self.family.sae(self.family.sae_config(self.cfg))
        self.objective = self.family.objective(self.cfg)
        self.objective.init_sae(self.sae)
        self.sync: Sync = Sync()
        d_sae = self.sae.d_sae
        # Normalisation scale s; 0 means "not estimated yet". A buffer, so checkpoints carry it.
        self.register_buffer("activation_scale", torch.tensor(0.0))
        if self.sae.transcoder:  # a transcoder's input and target are normalised separately
            self.register_buffer("target_scale", torch.tensor(0.0))
        self.register_buffer("tokens_since_fired", torch.zeros(d_sae, dtype=torch.long))
        # L0 / d_sae of the last training step (negative: none yet). It picks the next step's
        # dense or sparse path (the same function, other kernels and rounding), so it is
        # training state: a resumed run takes the path the uninterrupted one took.
        self.register_buffer("density", torch.tensor(-1.0))
        self.val_l0, self.val_fvu = L0(), FVU(self.sae.d_in)
        self.val_density, self.val_bias = FeatureDensity(d_sae), RelativeReconstructionBias()
        self._dead_window = self.cfg.dead_tokens_window
        # This step's scaled updates: (parameter, factor, its value before the step).
        self.scaled: list[tuple[Tensor, float, Tensor]] = []
        self.decoder_still = False  # this step leaves W_dec as it is
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
        self.sync = self.objective.sync = sync_for_run()
        self._tokens_per_step = dm.batch_size * world * self.trainer.accumulate_grad_batches
        self._dead_window = min(
            self.cfg.dead_tokens_window, max(1, self.total_steps() * self._tokens_per_step // 10)
        )
        if self.activation_scale > 0:  # restored from a checkpoint: never re-estimate
            return
        # Every rank reads the same deterministic first tokens; rank 0's results are then
        # broadcast anyway, so replicas agree even if two devices round differently. The scale
        # is read in chunks and the init sample is only what the objective asks for, so memory
        # stays bounded at any width.
        d = self.sae.d_in
        parts = {"activation_scale": slice(0, d)}
        if self.sae.transcoder:
            parts["target_scale"] = slice(d, 2 * d)
        for name, cols in parts.items():
            scale = torch.tensor(1.0)
            if self.cfg.normalize_activations:
                n = self.cfg.normalization_tokens
                scale = torch.tensor(dm.mean_squared_norm(n, cols=cols)).sqrt()
                if not torch.isfinite(scale) or scale <= 0:
                    what = {"activation_scale": "input", "target_scale": "target"}[name]
                    raise ValueError(
                        f"Cannot normalise activations: their mean squared norm ({what}) is "
                        f"{scale.item() ** 2!r}. Check the data source for NaNs/zeros, or set "
                        "sae.normalize_activations=false."
                    )
            getattr(self, name).copy_(self.trainer.strategy.broadcast(scale.float(), src=0))
        if self.objective.init_tokens > 0:
            sample = dm.sample_activations(self.objective.init_tokens).to(self.device)
            x, target = self.normalize(sample.float())
            with sharding.editable(self, "sae"):
                self.objective.init_from_data(self.sae, x, target)
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

    def optimizer_groups(self) -> list[dict[str, Any]]:
        """This SAE's Adam parameter groups: its parameters and hyper-parameters, one group
        unless the objective scales some parameters' learning rate (``lr_scales``). Groups, so
        a MultiSAELit can give every member its own in one optimiser (Adam is per-parameter, so
        that is exactly one Adam per SAE)."""
        cfg = self.cfg
        scales = {name: s for name, s in self.objective.lr_scales().items() if s != 1}
        hyper = {"betas": (cfg.adam_beta1, cfg.adam_beta2), "eps": cfg.adam_eps}
        named = dict(self.sae.named_parameters())
        if missing := sorted(set(scales) - set(named)):  # e.g. parameters renamed by a wrapper
            raise ValueError(f"lr scales name {missing}, not parameters of {type(self.sae)}")
        rest = [p for name, p in named.items() if name not in scales]
        groups = [{"params": rest, "lr": cfg.lr, **hyper}]
        groups += [
            {"params": [named[name]], "lr": cfg.lr * s, **hyper} for name, s in scales.items()
        ]
        return groups

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
        sharded = sharding.is_sharded(self.sae)
        optimizer = adam(self.optimizer_groups(), sharded, self.trainer.precision)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self.lr_lambda())
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    # --- training ---------------------------------------------------------------------------
    def normalize(self, rows: Tensor) -> tuple[Tensor, Tensor]:
        """(input, target) of a batch of data rows, each over its normalisation scale. An SAE's
        target is its input."""
        x, y = self.sae.split(rows)
        x = x / self.activation_scale
        if not self.sae.transcoder:
            return x, x
        return x, y / self.target_scale

    def sparsity_scale(self) -> float:
        warmup = schedules.effective_warmup(
            self.cfg.sparsity_warmup_steps, self.total_steps(), self.cfg.max_warmup_fraction
        )
        return schedules.sparsity_factor(self.global_step, warmup)

    def dead_mask(self) -> Tensor:
        return self.tokens_since_fired >= self._dead_window

    def current_step(self, x: Tensor) -> Step:
        """What the objective needs to know of this training step besides its batch ``x``."""
        density = float(self.density) if self.density >= 0 else None
        return Step(
            index=self.global_step,
            total=self.total_steps(),
            sparsity_scale=self.sparsity_scale(),
            dead_mask=self.dead_mask(),
            tokens_since_fired=self.tokens_since_fired,
            sparse=self.objective.wants_sparse(self.sae, x.device, density),
        )

    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        x, target = self.normalize(batch)
        step = self.current_step(x)
        out = self.sae(x, objective=self.objective, step=step, target=target)
        loss = out.loss
        self.track_firing(out.feature_acts)
        self.track_density(out.metrics["l0"])
        # Also what the non-finite guard names if this step's loss is NaN/inf.
        self.loss_terms = {f"train/loss/{k}": v.detach() for k, v in out.losses.items()}
        self.loss_terms["train/loss"] = loss.detach()
        after = self.objective.after_step(self.sae, out, step)  # state updates: every step
        if self.logs_this_step():
            logs = {**self.loss_terms, **{f"train/{k}": v for k, v in out.metrics.items()}}
            logs["train/dead_fraction"] = step.dead_mask.float().mean()
            logs["train/sparsity_scale"] = step.sparsity_scale
            logs.update({f"train/{k}": v for k, v in after.items()})
            self.log_dict(logs, on_step=True, on_epoch=False)
        self.log("l0", out.metrics["l0"], prog_bar=True, logger=False)
        return loss

    def logs_this_step(self) -> bool:
        """Whether the ``train/*`` values are logged this step: on the steps Lightning writes to
        the logger (every ``trainer.log_every_n_steps``, and a stopping step). A value logged on
        another step is overwritten before anything reads it, and each ``self.log`` costs
        Lightning a few milliseconds on a CPU, as much as a small SAE's step (docs/speed.md)."""
        trainer = self.trainer
        every = trainer.log_every_n_steps
        return every > 0 and ((trainer.global_step + 1) % every == 0 or trainer.should_stop)

    @torch.no_grad()
    def track_firing(self, feature_acts: Tensor) -> None:
        # Activations are >= 0 in every family (tests/sae/test_families.py), so "fired" is a
        # positive column max: one reduction, where (f != 0).any(0) first writes a [B, d_sae]
        # boolean tensor (docs/speed.md). A latent is alive if it fired on any rank.
        fired = self.sync.any(feature_acts.amax(0) > 0)
        self.tokens_since_fired += feature_acts.shape[0] * self.trainer.world_size
        self.tokens_since_fired.masked_fill_(fired, 0)  # a boolean index would sync a GPU

    @torch.no_grad()
    def track_density(self, l0: Tensor) -> None:
        # Only CPUs take the sparse path, and reading a number there is free; on a GPU it would
        # wait for the device every step. Averaged over ranks, so every rank takes one path.
        if l0.device.type == "cpu":
            self.density.copy_(self.sync.mean(l0.detach().float()) / self.sae.d_sae)

    def on_before_optimizer_step(self, optimizer) -> None:
        scales = self.objective.update_scales(self.global_step, self.total_steps())
        params = dict(self.sae.named_parameters()) if scales else {}
        self.scaled = []
        for name, scale in scales.items():
            if scale == 0:
                params[name].grad = None  # Adam skips a parameter without a gradient, its state too
            else:
                self.scaled.append((params[name], scale, params[name].detach().clone()))
        self.decoder_still = scales.get("W_dec") == 0
        if self.objective.unit_norm_decoder:
            self.sae.remove_parallel_decoder_grad()

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        self.after_optimizer_step()

    def after_optimizer_step(self) -> None:
        for param, scale, before in self.scaled:
            # Adam's update is linear in the lr: scale it after the fact.
            param.data.lerp_(before, 1 - scale)
        # A still decoder is left bit for bit (renormalising unit rows moves their last bits).
        if self.objective.unit_norm_decoder and not self.decoder_still:
            self.sae.normalize_decoder()
        self.objective.after_optimizer_step(self.sae)

    # --- validation -------------------------------------------------------------------------
    def validation_step(self, batch: Tensor, batch_idx: int) -> None:
        x, target = self.normalize(batch)
        out = self.sae(x, target=target)
        self.val_l0.update(out.feature_acts)
        self.val_fvu.update(target, out.x_hat)
        self.val_density.update(out.feature_acts)
        self.val_bias.update(target, out.x_hat)

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
        """A copy of the SAE that acts on RAW activations (normalisation scale folded in), in
        its export form (BatchTopK: the equivalent JumpReLU SAE).
        Under trainer=fsdp this gathers the shards: call it on every rank."""
        sae = sharding.plain_copy(self.sae).eval()
        if self.sae.transcoder and self.activation_scale > 0:
            sae.fold_transcoder_scales(float(self.activation_scale), float(self.target_scale))
        elif self.activation_scale > 0:
            sae.fold_activation_scale(float(self.activation_scale))
        return sae.export_form()
