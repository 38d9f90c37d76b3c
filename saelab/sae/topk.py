"""TopK SAE (Gao et al. 2024, arXiv 2406.04093), docs/maths.md §3.

    z     = (x - b_dec) @ W_enc + b_enc
    f     = ReLU(TopK_k(z))                        TopK: the k largest per token
    x_hat = f @ W_dec + b_dec
    loss  = mse(x, x_hat) + alpha * L_aux

AuxK (Gao et al. appendix A.2, auxk.py) gives dead latents a gradient. On a CPU, training runs on
the sparse path (``sparse.py``): the encoder product is dense (the selection needs every
pre-activation), the decode and every gradient touch only the selected latents.
The pre-encoder bias is folded into the encoder bias, (x - b_dec) @ W_enc + b_enc =
x @ W_enc + (b_enc - b_dec @ W_enc), so b_dec's gradient through the encoder is a vector
product, not a third [B, d_sae] x [d_sae, d_in] matrix product.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .auxk import scatter_topk
from .base import SAE, SAEConfig
from .objective import Encoded, Objective, Step
from .registry import Family, register
from .sparse import Selection, encode_selected, topk_rows, use_sparse
from .train_config import TrainConfig, check, width_scaled_lr


@dataclass
class TopKConfig(SAEConfig):
    k: int = 32
    """Latents kept per token (the L0)."""

    architecture = "topk"

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self, "k", 0 < self.k <= self.d_sae, f"an integer in [1, d_sae={self.d_sae}]")


class TopKSAE(SAE):
    config_class = TopKConfig
    saelens_architecture = "topk"
    apply_b_dec_to_input = True

    def __init__(self, cfg: TopKConfig):
        super().__init__(cfg)
        self.cfg: TopKConfig = cfg

    def saelens_cfg(self) -> dict:
        # k at the top level (SAELens defaults it to 100), activations not rescaled by decoder norms.
        return {**super().saelens_cfg(), "k": self.cfg.k, "rescale_acts_by_decoder_norm": False}

    def encoder_bias(self) -> Tensor:
        """b_enc - b_dec @ W_enc: the pre-encoder bias folded into the encoder's (a transcoder
        has none: its b_dec is in the output's space)."""
        if not self.apply_b_dec_to_input:
            return self.b_enc
        return self.b_enc - self.b_dec @ self.W_enc

    def pre_acts(self, x: Tensor) -> Tensor:
        if x.dim() == 2:
            return torch.addmm(self.encoder_bias(), x, self.W_enc)
        return x @ self.W_enc + self.encoder_bias()

    def select(self, z: Tensor) -> Tensor:
        return scatter_topk(z, self.cfg.k)

    def encode(self, x: Tensor) -> Tensor:
        return self.select(self.pre_acts(x))


@torch.no_grad()
def geometric_median(points: Tensor, iters: int = 100, tol: float = 1e-6) -> Tensor:
    """Weiszfeld's algorithm: the point minimising the sum of Euclidean distances to ``points``
    [N, d]. Gao et al. initialise TopK's b_dec with it (robust to outlier activations)."""
    points = points.double()
    median = points.mean(0)
    for _ in range(iters):
        dist = (points - median).norm(dim=1).clamp_min(1e-12)
        weights = 1 / dist
        new = (weights[:, None] * points).sum(0) / weights.sum()
        if (new - median).norm() <= tol * median.norm().clamp_min(1e-12):
            median = new
            break
        median = new
    return median.float()


@dataclass
class TopKTrainConfig(TrainConfig, TopKConfig):
    aux_k: int | None = None
    """Dead latents used by AuxK; None means d_in // 2 (OpenAI used 256)."""
    aux_coefficient: float = 1 / 32
    """alpha, the weight of the AuxK loss."""
    adam_eps: float = 6.25e-10
    sparsity_warmup_steps: int | None = 0  # no sparsity penalty to warm up

    def default_lr(self) -> float:
        return width_scaled_lr(self, 2e-4, 2**14)  # Gao et al.'s 2e-4 / sqrt(d_sae / 2^14)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.aux_k is None:
            self.aux_k = max(1, self.d_in // 2)
        check(self, "aux_k", 0 < self.aux_k <= self.d_sae, f"an integer in [1, d_sae={self.d_sae}]")
        check(self, "aux_coefficient", self.aux_coefficient >= 0, "a number >= 0")


class TopKObjective(Objective):
    init_tokens = 10_000  # b_dec at the geometric median of this many rows (Gao et al. A.1)

    @torch.no_grad()
    def init_from_data(self, sae: TopKSAE, x: Tensor, target: Tensor | None = None) -> None:
        target = x if target is None else target  # b_dec lives in the output's space
        sae.b_dec.copy_(geometric_median(target[: self.init_tokens]))

    def wants_sparse(self, sae: TopKSAE, device, density) -> bool:
        # L0 is k by construction: the choice depends on the config only.
        return use_sparse(device, sae.cfg.k / sae.d_sae)

    def select_sparse(self, sae: TopKSAE, z: Tensor) -> Selection:
        """The training selection as (row, latent) pairs: the k largest per row."""
        return topk_rows(z, sae.cfg.k)

    def selection_metrics(self, acts: Tensor) -> dict[str, Tensor]:
        """Family hook: extra metrics from the selected activations (sparse [nnz] or dense)."""
        return {}

    def encode_dense(self, sae: TopKSAE, x: Tensor, step: Step) -> Encoded:
        bias = sae.encoder_bias()
        z = torch.addmm(bias, x, sae.W_enc)
        f = sae.select(z)
        l0 = (f > 0).sum() / x.shape[0]
        return Encoded(l0, {}, f=f, z=z, aux_bias=bias, metrics=self.selection_metrics(f))

    def encode_sparse(self, sae: TopKSAE, x: Tensor, step: Step) -> Encoded:
        bias = sae.encoder_bias()
        with torch.no_grad():  # the selection needs all of z; gradients: encode_selected
            z = torch.addmm(bias.detach(), x, sae.W_enc.detach())
        sel = self.select_sparse(sae, z)
        acts = F.relu(encode_selected(sel, x, sae.W_enc, bias))
        l0 = (acts > 0).sum() / x.shape[0]
        metrics = self.selection_metrics(acts)
        return Encoded(l0, {}, sel=sel, acts=acts, z=z, aux_bias=bias, metrics=metrics)


FAMILY = register(
    Family(
        name="topk",
        sae=TopKSAE,
        train_config=TopKTrainConfig,
        objective=TopKObjective,
        sparsity_knobs=("k",),
    )
)
