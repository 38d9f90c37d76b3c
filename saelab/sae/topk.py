"""TopK SAE (Gao et al. 2024, arXiv 2406.04093) and BatchTopK (Bussmann et al. 2024, 2412.06410).

    z     = (x - b_dec) @ W_enc + b_enc
    f     = ReLU(TopK_k(z))                        TopK: the k largest per token
    x_hat = f @ W_dec + b_dec
    loss  = mse(x, x_hat) + alpha * L_aux

AuxK (Gao et al. appendix A.2) gives dead latents a gradient: the top ``aux_k`` pre-activations
among dead latents reconstruct the detached residual e = x - x_hat, decoded without b_dec.
BatchTopK keeps the k*B largest activations of the whole batch while training (mean L0 = k) and
at inference uses one global threshold, an EMA of the smallest selected activation.

On a CPU, training runs on the sparse path (``sparse.py``): the encoder product is dense (the
selection needs every pre-activation), the decode and every gradient touch only the selected
latents.
The pre-encoder bias is folded into the encoder bias, (x - b_dec) @ W_enc + b_enc =
x @ W_enc + (b_enc - b_dec @ W_enc), so b_dec's gradient through the encoder is a vector
product, not a third [B, d_sae] x [d_sae, d_in] matrix product.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .auxk import auxk, auxk_loss, scatter_topk
from .base import SAE, SAEConfig, SAEOutput, _require, reconstruction_loss, require_nonnegative
from .sparse import (
    Selection,
    above,
    decode_selected,
    encode_selected,
    topk_batch,
    topk_rows,
    use_sparse,
)


@dataclass
class TopKConfig(SAEConfig):
    k: int = 32
    """Latents kept per token (the L0)."""
    aux_k: int | None = None
    """Dead latents used by AuxK; None means d_in // 2 (docs/maths.md §3; OpenAI used 256)."""
    aux_coefficient: float = 1 / 32
    """alpha, the weight of the AuxK loss."""

    architecture = "topk"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.aux_k is None:
            self.aux_k = max(1, self.d_in // 2)
        _require(self, "k", 0 < self.k <= self.d_sae, f"an integer in [1, d_sae={self.d_sae}]")
        _require(
            self, "aux_k", 0 < self.aux_k <= self.d_sae, f"an integer in [1, d_sae={self.d_sae}]"
        )
        require_nonnegative(self, "aux_coefficient")


@dataclass
class BatchTopKConfig(TopKConfig):
    threshold_ema: float = 0.999
    """EMA decay of the inference threshold (the smallest activation selected per batch)."""

    architecture = "batchtopk"

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(self, "threshold_ema", 0 <= self.threshold_ema < 1, "in [0, 1)")


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


class TopKSAE(SAE):
    config_class = TopKConfig

    def __init__(self, cfg: TopKConfig):
        super().__init__(cfg)
        self.cfg: TopKConfig = cfg

    def saelens_cfg(self) -> dict:
        """SAELens's name for this family and the cfg.json fields its loader needs
        (docs/interop.md): ``k`` at the top level (SAELens defaults it to 100 otherwise)."""
        return {
            "architecture": "topk",
            "k": self.cfg.k,
            "apply_b_dec_to_input": True,
            "rescale_acts_by_decoder_norm": False,
        }

    def export_form(self) -> SAE:
        """The SAE written to disk by ``saelab.io.save_sae`` (this one)."""
        return self

    def encoder_bias(self) -> Tensor:
        """b_enc - b_dec @ W_enc: the pre-encoder bias folded into the encoder's."""
        return self.b_enc - self.b_dec @ self.W_enc

    def pre_acts(self, x: Tensor) -> Tensor:
        return (
            torch.addmm(self.encoder_bias(), x, self.W_enc)
            if x.dim() == 2
            else x @ self.W_enc + self.encoder_bias()
        )

    def select(self, z: Tensor) -> Tensor:
        return scatter_topk(z, self.cfg.k)

    def select_sparse(self, z: Tensor) -> Selection:
        """The training selection as (row, latent) pairs: the k largest per row."""
        return topk_rows(z, self.cfg.k)

    def encode(self, x: Tensor) -> Tensor:
        return self.select(self.pre_acts(x))

    def auxk_loss(self, x: Tensor, x_hat: Tensor, z: Tensor, dead_mask: Tensor) -> Tensor:
        return auxk_loss(x, x_hat, z, dead_mask, self.W_dec, self.cfg.aux_k)

    def forward(
        self, x: Tensor, sparsity_scale: float = 1.0, dead_mask: Tensor | None = None
    ) -> SAEOutput:
        x2 = x.reshape(-1, self.d_in)
        bias = self.encoder_bias()
        if use_sparse(x.device, self.cfg.k / self.d_sae):
            with torch.no_grad():  # the selection needs all of z; gradients: encode_selected
                z = torch.addmm(bias.detach(), x2, self.W_enc.detach())
            sel = self.select_sparse(z)
            acts = F.relu(encode_selected(sel, x2, self.W_enc, bias))
            x_hat = decode_selected(sel, acts, self.W_dec) + self.b_dec
        else:
            z = torch.addmm(bias, x2, self.W_enc)
            sel, f = None, self.select(z)
            acts = f
            x_hat = self.decode(f)
        losses = {"mse": reconstruction_loss(x2, x_hat)}
        if dead_mask is not None and self.cfg.aux_coefficient > 0:
            aux = auxk(x2, x_hat, z, dead_mask, self.W_enc, bias, self.W_dec, self.cfg.aux_k)
            losses["auxk"] = self.cfg.aux_coefficient * aux
        if sel is not None:  # sparse: build the dense features only now that z is gone
            shape = z.shape
            del z
            f = sel.dense(acts, shape)
        metrics = {"l0": (acts > 0).sum() / x2.shape[0]}
        metrics.update(self.selection_metrics(acts))
        lead = x.shape[:-1]
        return SAEOutput(x_hat.view(*lead, self.d_in), f.view(*lead, self.d_sae), losses, metrics)

    def selection_metrics(self, acts: Tensor) -> dict[str, Tensor]:
        """Family hook: extra metrics from the selected activations (sparse [nnz] or dense)."""
        return {}


class BatchTopKSAE(TopKSAE):
    config_class = BatchTopKConfig

    def __init__(self, cfg: BatchTopKConfig):
        super().__init__(cfg)
        self.cfg: BatchTopKConfig = cfg
        # One global threshold for inference; negative means "not estimated yet".
        self.register_buffer("threshold", torch.tensor(-1.0))

    def saelens_cfg(self) -> dict:
        """Written as the JumpReLU SAE it is at inference (``export_form``)."""
        return {"architecture": "jumprelu", "apply_b_dec_to_input": False}

    def export_form(self):
        """The JumpReLU SAE with the global threshold (``to_jumprelu``): SAELens has no
        inference-time BatchTopK, and the two encode identically."""
        return self.to_jumprelu()

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

    def select_sparse(self, z: Tensor) -> Selection:
        if self.training or self.threshold < 0:
            return topk_batch(z, self.cfg.k * z.shape[0])
        return above(z, self.threshold)

    def selection_metrics(self, acts: Tensor) -> dict[str, Tensor]:
        if not self.training:
            return {}
        # Smallest selected activation: the EMA target for the inference threshold.
        selected = acts.detach()
        return {"min_selected_act": selected.masked_fill(selected <= 0, float("inf")).min()}

    @torch.no_grad()
    def update_threshold(self, min_selected_act: Tensor) -> None:
        """EMA update of the inference threshold (call once per optimiser step; in DDP pass the
        value reduced over ranks so every replica keeps the same threshold). Tensor ops only, no
        Python branch on a value: on a GPU this never waits for the device."""
        value = min_selected_act.to(self.threshold)
        first = self.threshold < 0
        new = torch.where(
            first, value, torch.lerp(self.threshold, value, 1 - self.cfg.threshold_ema)
        )
        self.threshold.copy_(torch.where(torch.isfinite(value), new, self.threshold))

    @torch.no_grad()
    def to_jumprelu(self):
        """The inference-time SAE as a JumpReLU SAE (docs/maths.md §3): the pre-encoder bias is moved
        into b_enc (``(x - b_dec) @ W_enc + b_enc == x @ W_enc + (b_enc - b_dec @ W_enc)``) and
        every latent gets the global threshold, so encodings are identical."""
        from .jumprelu import JumpReLUConfig, JumpReLUSAE

        if not self.threshold > 0:
            raise ValueError(
                "BatchTopK has no positive inference threshold yet (it is estimated during "
                "training); train it before exporting it as a JumpReLU SAE."
            )
        out = JumpReLUSAE(JumpReLUConfig(d_in=self.d_in, d_sae=self.d_sae)).to(self.W_dec)
        out.W_enc.copy_(self.W_enc)
        out.W_dec.copy_(self.W_dec)
        out.b_dec.copy_(self.b_dec)
        out.b_enc.copy_(self.b_enc - self.b_dec @ self.W_enc)
        out.log_threshold.fill_(float(self.threshold.log()))
        return out

    def _input_scaled_parameters(self) -> tuple[str, ...]:
        names = super()._input_scaled_parameters()
        return names + ("threshold",) if self.threshold >= 0 else names
