"""One LightningModule per SAE family, each a thin layer on SAELitModule, and each family's flat
Hydra schema (its SAE config + TrainConfig, with the family's published defaults)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from saelab.sae import BatchTopKSAE, GatedSAE, JumpReLUSAE, ReLUSAE, TopKSAE
from saelab.sae.base import _require, require_choice
from saelab.sae.gated import GatedConfig
from saelab.sae.jumprelu import JumpReLUConfig
from saelab.sae.relu import ReLUConfig
from saelab.sae.topk import BatchTopKConfig, TopKConfig, geometric_median

from . import sharding
from .base import SAELitModule
from .config import TrainConfig, width_scaled_lr

# --- JumpReLU (docs/maths.md §1) -----------------------------------------------------------------------
# The paper's SAE and estimators (saelab/sae/jumprelu.py) trained with saelab's recipe: the
# defaults below were chosen by measurement on budgets of 0.5M-8M tokens (bench/jumprelu_budget.py,
# README "Choosing eps and lambda"). The paper's own recipe (Gemma Scope: fixed lambda 5e-4,
# eps = theta_init = 1e-3, lr 7e-5, beta1 0, no warm-up of thresholds) is conf/sae/jumprelu_paper.yaml.
JUMPRELU_LR_AT_1024 = 3e-3
"""Best of 1e-3 / 3e-3 / 5e-3 / 1e-2 at d_sae = 1024 and 2M tokens in prototype runs (TopK was
best at 3e-3 too)."""


@dataclass
class JumpReLUTrainConfig(TrainConfig, JumpReLUConfig):
    target_l0: float | None = 32
    bandwidth: float = 0.05
    aux_coefficient: float = 1.0
    lr: float | None = None
    """None: 3e-3 at d_sae = 1,024 (measured), scaled as 1/sqrt(d_sae) like Gao et al.'s TopK rule."""
    adam_beta1: float = 0.9
    lr_warmup_steps: int = 1000
    sparsity_warmup_steps: int | None = 10_000
    threshold_warmup_fraction: float = 0.2
    """Threshold warm-up: for this first fraction of the run, each step first sets the
    thresholds from the batch so that its L0 is target_l0 (else threshold_init_l0), the way
    ``threshold_warmup`` says; then the straight-through estimator learns per-latent thresholds
    from where the warm-up left them. On small budgets this stops the early collapse of L0 (a
    random dictionary makes firing near the threshold costly, so the reconstruction pushes
    thresholds up) and the dead latents the collapse leaves. 0 = off (the paper)."""
    threshold_warmup: str = "pooled"
    """'pooled': one threshold for every latent, the value the batch's L0 * B largest
    pre-activations exceed (BatchTopK's selection written as a JumpReLU), so latents fire as
    often as the data makes them. 'per_latent': each latent at its own quantile, all firing
    equally often (as ``threshold_init_l0``). Measured in bench/jumprelu_budget.py: pooled
    reconstructs better and leaves fewer dead latents."""
    dead_reinit: str = "off"
    """Prototype (bench/robustness.py): before each training step, re-initialise every dead
    latent (silent for the dead window) from the batch, so it fires on a fraction
    target_l0 / d_sae of the batch's tokens (those its encoder row scores highest), as the
    per-latent warm-up would set it. 'threshold': its threshold := its own quantile q_i of this
    batch's pre-activations (floored at 1e-6, so a latent whose pre-activations are all negative
    stays silent). 'bias': b_enc_i += tau - q_i and theta_i := tau, with tau the median threshold
    of the live latents: it fires on those tokens whatever the sign of its pre-activations, with
    values like a live latent's. 'off': neither (the default). Single process only (the quantile
    is this rank's batch)."""

    b_dec_init: str = "zeros"
    """Prototype (bench/robustness.py): 'geometric_median' starts b_dec at the geometric median of
    the first 10,000 normalised tokens, as TopK does, so no latent has to learn the data's offset
    (a latent that does fires on every token: a dense latent); 'zeros' (the default) as before."""

    def __post_init__(self) -> None:
        if self.lr is None:
            self.lr = width_scaled_lr(self, JUMPRELU_LR_AT_1024, 1024)
        super().__post_init__()
        _require(
            self, "threshold_warmup_fraction", 0 <= self.threshold_warmup_fraction <= 1, "in [0, 1]"
        )
        require_choice(self, "threshold_warmup", ("pooled", "per_latent"))
        require_choice(self, "dead_reinit", ("off", "threshold", "bias"))
        require_choice(self, "b_dec_init", ("zeros", "geometric_median"))
        if (
            self.threshold_warmup_fraction > 0
            and self.target_l0 is None
            and self.threshold_init_l0 is None
        ):
            raise ValueError(
                f"threshold_warmup_fraction={self.threshold_warmup_fraction} needs an L0 to aim at: set "
                "sae.target_l0 (or sae.threshold_init_l0), or sae.threshold_warmup_fraction=0."
            )


class JumpReLULit(SAELitModule):
    sae_class = JumpReLUSAE
    config_class = JumpReLUTrainConfig

    threshold_init_tokens = 16_384

    def init_from_data(self, x: Tensor) -> None:
        if self.cfg.b_dec_init == "geometric_median":  # as TopK does (Gao et al. A.1)
            with torch.no_grad():
                self.sae.b_dec.copy_(geometric_median(x[:10_000]))
        if self.cfg.threshold_init_l0 is not None:
            self.sae.init_threshold_from_data(
                x[: self.threshold_init_tokens], self.cfg.threshold_init_l0
            )

    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        if self.cfg.dead_reinit != "off":
            self.reinit_dead(self.normalize(batch))
        return super().training_step(batch, batch_idx)

    @torch.no_grad()
    def reinit_dead(self, x: Tensor) -> None:
        """Dead latents re-initialised on x as ``dead_reinit`` says."""
        dead_mask = self.dead_mask()
        dead = torch.nonzero(dead_mask).squeeze(1)
        if dead.numel() == 0:
            return
        sae = self.sae
        z = x @ sae.W_enc[:, dead] + sae.b_enc[dead]  # only the dead latents' columns
        l0 = self.cfg.target_l0 or self.cfg.threshold_init_l0 or 1.0
        m = x.shape[0] - round(x.shape[0] * (1 - l0 / sae.d_sae))  # rows each should fire on
        q = z.topk(min(m + 1, x.shape[0]), dim=0).values[-1].float()
        if self.cfg.dead_reinit == "threshold":
            sae.log_threshold[dead] = q.clamp_min(1e-6).log()
            return
        live = sae.log_threshold[~dead_mask]
        tau = live.exp().median() if live.numel() else q.clamp_min(1e-6).median()
        sae.b_enc[dead] += (tau - q).to(sae.b_enc.dtype)
        sae.log_threshold[dead] = tau.log()

    def sae_kwargs(self) -> dict:
        frac = self.cfg.threshold_warmup_fraction
        if frac > 0 and self.global_step < frac * self.total_steps():
            return {
                "quantile_l0": self.cfg.target_l0 or self.cfg.threshold_init_l0,
                "pooled_quantile": self.cfg.threshold_warmup == "pooled",
            }
        return {}

    def after_optimizer_step(self) -> None:
        super().after_optimizer_step()
        # The threshold warm-up's thresholds become the parameter's value here, outside the
        # forward, where writing works for a sharded SAE too (the forward only leaves them).
        if self.sae.warmup_threshold is not None:
            sharding.assign(self.sae.log_threshold, self.sae.warmup_threshold.log())
            self.sae.warmup_threshold = None

    def after_training_step(self, out) -> None:
        # Users need to see thresholds move (with eps = theta_init = 1e-3, L0 can stay high
        # for a long time on small token budgets; docs/maths.md §1).
        theta = self.sae.threshold.detach()
        self.log_dict(
            {
                "train/threshold/mean": theta.mean(),
                "train/threshold/median": theta.median(),
                "train/threshold/min": theta.min(),
                "train/threshold/max": theta.max(),
            }
        )
        if self.sae.cfg.bandwidth_rule != "fixed":  # the data-driven STE bandwidth eps
            eps = self.sae.bandwidth_estimate
            self.log_dict(
                {"train/bandwidth/median": eps.median(), "train/bandwidth/mean": eps.mean()}
            )
        if self.sae.cfg.dual_target:  # the Lagrange multiplier steering L0 to target_l0
            self.log("train/l0_multiplier", self.sae.l0_multiplier)


# --- Gated (docs/maths.md §2; defaults from public trainers) ------------------------------------------
@dataclass
class GatedTrainConfig(TrainConfig, GatedConfig):
    lr: float = 5e-5
    lr_warmup_steps: int = 1000
    sparsity_warmup_steps: int | None = 2000


class GatedLit(SAELitModule):
    sae_class = GatedSAE
    config_class = GatedTrainConfig


# --- TopK / BatchTopK (docs/maths.md §3) ---------------------------------------------------------------
@dataclass
class TopKTrainConfig(TrainConfig, TopKConfig):
    lr: float | None = None
    """None: Gao et al.'s 2e-4 / sqrt(d_sae / 2^14)."""
    adam_eps: float = 6.25e-10
    lr_warmup_steps: int = 1000
    sparsity_warmup_steps: int | None = 0  # no sparsity penalty to warm up

    def __post_init__(self) -> None:
        if self.lr is None:
            self.lr = width_scaled_lr(self, 2e-4, 2**14)
        super().__post_init__()


@dataclass
class BatchTopKTrainConfig(TopKTrainConfig, BatchTopKConfig):
    pass


class TopKLit(SAELitModule):
    sae_class = TopKSAE
    config_class = TopKTrainConfig

    geometric_median_tokens = 10_000

    def init_from_data(self, x: Tensor) -> None:
        # b_dec at the geometric median of a sample (Gao et al. appendix A.1).
        with torch.no_grad():
            self.sae.b_dec.copy_(geometric_median(x[: self.geometric_median_tokens]))


class BatchTopKLit(TopKLit):
    sae_class = BatchTopKSAE
    config_class = BatchTopKTrainConfig

    def after_training_step(self, out) -> None:
        # Mean over ranks of each rank's smallest selected activation keeps replicas identical.
        value = self.trainer.strategy.reduce(out.metrics["min_selected_act"], reduce_op="mean")
        self.sae.update_threshold(value)
        self.log("train/inference_threshold", self.sae.threshold)

    def export_sae(self):
        # BatchTopK is used at inference with its global threshold: export that JumpReLU SAE.
        return super().export_sae().to_jumprelu()


# --- ReLU (docs/maths.md §4; Anthropic April 2024) ----------------------------------------------------
@dataclass
class ReLUTrainConfig(TrainConfig, ReLUConfig):
    lr: float = 5e-5
    adam_beta1: float = 0.9
    lr_warmup_steps: int = 0
    lr_decay_fraction: float = 0.2
    sparsity_warmup_steps: int | None = None  # 5% of the run
    max_warmup_fraction: float = 0.05


class ReLULit(SAELitModule):
    sae_class = ReLUSAE
    config_class = ReLUTrainConfig


LIT_CLASSES: dict[str, type[SAELitModule]] = {
    cls.sae_class.config_class.architecture: cls
    for cls in (JumpReLULit, GatedLit, TopKLit, BatchTopKLit, ReLULit)
}


def lit_class_for(config) -> type[SAELitModule]:
    """The LightningModule class for a family config (instance or class)."""
    return LIT_CLASSES[config.architecture]
