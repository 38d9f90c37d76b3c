"""BatchTopK SAE (Bussmann et al. 2024, arXiv 2412.06410), docs/maths.md §3.

TopK's SAE and loss, but training keeps the k*B largest activations of the whole [B, d_sae]
batch (mean L0 = k), and inference uses one global threshold, an EMA of the smallest selected
activation per batch. At inference it IS a JumpReLU SAE with that threshold for every latent,
and it is exported as one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .jumprelu import JumpReLUSAE
from .objective import Step, Sync
from .registry import Family, register
from .sparse import Selection, above, topk_batch
from .topk import TopKConfig, TopKObjective, TopKSAE, TopKTrainConfig
from .train_config import check


@dataclass
class BatchTopKConfig(TopKConfig):
    architecture = "batchtopk"


class BatchTopKSAE(TopKSAE):
    config_class = BatchTopKConfig

    def __init__(self, cfg: BatchTopKConfig):
        super().__init__(cfg)
        # One global threshold for inference; negative means "not estimated yet".
        self.register_buffer("threshold", torch.tensor(-1.0))

    def batch_select(self, z: Tensor) -> Tensor:
        """Keep the k * B largest ReLU activations of the whole [B, M] batch."""
        acts = F.relu(z)
        flat = acts.reshape(-1)
        values, indices = flat.topk(self.cfg.k * acts.shape[0], sorted=False)
        return torch.zeros_like(flat).scatter_(0, indices, values).view_as(acts)

    def select(self, z: Tensor) -> Tensor:
        if self.training or self.threshold < 0:
            return self.batch_select(z)
        return z * (z > self.threshold).to(z.dtype)

    @torch.no_grad()
    def to_jumprelu(self) -> JumpReLUSAE:
        """The inference-time SAE as a JumpReLU SAE: the pre-encoder bias is moved into b_enc
        (``(x - b_dec) @ W_enc + b_enc == x @ W_enc + (b_enc - b_dec @ W_enc)``) and every
        latent gets the global threshold, so encodings are identical."""
        if not self.threshold > 0:
            raise ValueError(
                "BatchTopK has no positive inference threshold yet (it is estimated during "
                "training); train it before exporting it as a JumpReLU SAE."
            )
        out = JumpReLUSAE.shaped_like(self)
        out.W_enc.copy_(self.W_enc)
        out.W_dec.copy_(self.W_dec)
        out.b_dec.copy_(self.b_dec)
        out.b_enc.copy_(self.encoder_bias())
        if self.W_skip is not None:
            out.W_skip.copy_(self.W_skip)
        out.log_threshold.fill_(float(self.threshold.log()))
        return out

    def export_form(self) -> JumpReLUSAE:
        return self.to_jumprelu()

    def _input_scaled_parameters(self) -> tuple[str, ...]:
        names = super()._input_scaled_parameters()
        return names + ("threshold",) if self.threshold >= 0 else names


@dataclass
class BatchTopKTrainConfig(TopKTrainConfig, BatchTopKConfig):
    threshold_ema: float = 0.99
    """EMA decay of the inference threshold (the smallest activation selected per batch),
    bias-corrected so no single early batch dominates (docs/maths.md §3.3)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self, "threshold_ema", 0 <= self.threshold_ema < 1, "in [0, 1)")


class BatchTopKObjective(TopKObjective):
    def select_sparse(self, sae: BatchTopKSAE, z: Tensor) -> Selection:
        if sae.training or sae.threshold < 0:
            return topk_batch(z, sae.cfg.k * z.shape[0])
        return above(z, sae.threshold)

    def selection_metrics(self, acts: Tensor) -> dict[str, Tensor]:
        if not self.training:
            return {}
        # Smallest selected activation: the EMA target for the inference threshold.
        selected = acts.detach()
        return {"min_selected_act": selected.masked_fill(selected <= 0, float("inf")).min()}

    def after_step(self, sae: BatchTopKSAE, out, step: Step) -> dict[str, Tensor]:
        update_threshold(
            sae, out.metrics["min_selected_act"], self.cfg.threshold_ema, step.index + 1, self.sync
        )
        return {"inference_threshold": sae.threshold.clone()}


@torch.no_grad()
def update_threshold(
    sae: BatchTopKSAE, min_selected_act: Tensor, ema: float, n: int = 1, sync=None
) -> None:
    """Bias-corrected EMA of the inference threshold towards this step's smallest selected
    activation (its mean over ranks, so replicas keep one threshold), ``n`` the 1-based update
    count. The weight of the new value is (1 - ema) / (1 - ema^n): 1 at the first update, so
    the threshold is then taken as is, and the EMA's own weight after that, so the first batch
    (from a random SAE) fades like any other instead of standing for the whole past. Tensor
    ops only, no Python branch on a value: on a GPU this never waits for the device."""
    value = (sync or Sync()).mean(min_selected_act.to(sae.threshold))
    weight = (1 - ema) / (1 - ema ** max(n, 1))
    first = sae.threshold < 0
    new = torch.where(first, value, torch.lerp(sae.threshold, value, weight))
    sae.threshold.copy_(torch.where(torch.isfinite(value), new, sae.threshold))


FAMILY = register(
    Family(
        name="batchtopk",
        sae=BatchTopKSAE,
        train_config=BatchTopKTrainConfig,
        objective=BatchTopKObjective,
        sparsity_knobs=("k",),
    )
)
