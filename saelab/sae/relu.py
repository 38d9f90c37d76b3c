"""Standard ReLU SAE, as in Anthropic's April 2024 "training SAEs" update, docs/maths.md §4.

    f     = ReLU(x @ W_enc + b_enc)
    x_hat = f @ W_dec + b_dec
    loss  = mse(x, x_hat) + lambda * sum_i f_i * ||W_dec[i]||_2

The decoder norm sits inside the penalty, so there is no unit-norm constraint: shrinking f while
growing W_dec[i] no longer lowers the loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import SAE, SAEConfig
from .fused import ReLUWithColumnSums
from .objective import Encoded, Objective, Step
from .registry import Family, register
from .sparse import above, encode_selected
from .train_config import TrainConfig, check


@dataclass
class ReLUConfig(SAEConfig):
    architecture = "relu"


class ReLUSAE(SAE):
    config_class = ReLUConfig
    saelens_architecture = "standard"
    saelens_transcoder = "{skip}transcoder"

    def encode(self, x: Tensor) -> Tensor:
        return F.relu(self.pre_acts(x))


@dataclass
class ReLUTrainConfig(TrainConfig, ReLUConfig):
    l1_coefficient: float = 5.0
    """lambda on the decoder-norm-weighted L1 (under unit-mean-squared-norm scaling; values do
    not transfer from Anthropic's E||x|| = sqrt(d_in) normalisation)."""
    adam_beta1: float = 0.9
    lr_warmup_steps: int = 0
    lr_decay_fraction: float = 0.2
    sparsity_warmup_steps: int | None = None  # 5% of the run
    max_warmup_fraction: float = 0.05

    def default_lr(self) -> float:
        return 5e-5

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self, "l1_coefficient", self.l1_coefficient >= 0, "a number >= 0")


class ReLUObjective(Objective):
    unit_norm_decoder = False

    def _penalty(self, weighted_sum: Tensor, n: int, step: Step) -> dict[str, Tensor]:
        return {"l1": self.cfg.l1_coefficient * step.sparsity_scale * weighted_sum / n}

    def encode_dense(self, sae: ReLUSAE, x: Tensor, step: Step) -> Encoded:
        # ReLU in place in z's buffer, with column sums: sum_b sum_i f_bi ||W_dec[i]|| is
        # sums . ||W_dec|| (fused.ReLUWithColumnSums), no [B, d_sae] temporary.
        f, sums, fired = ReLUWithColumnSums.apply(sae.pre_acts(x))
        n = x.shape[0]
        return Encoded(fired / n, self._penalty(sums @ sae.W_dec.norm(dim=1), n, step), f=f)

    def encode_sparse(self, sae: ReLUSAE, x: Tensor, step: Step) -> Encoded:
        with torch.no_grad():
            sel = above(sae.pre_acts(x), 0.0)
        acts = F.relu(encode_selected(sel, x, sae.W_enc, sae.b_enc))
        n = x.shape[0]
        weighted = (acts * sae.W_dec.norm(dim=1)[sel.cols]).sum()
        l0 = torch.tensor(len(acts) / n)
        return Encoded(l0, self._penalty(weighted, n, step), sel=sel, acts=acts)


FAMILY = register(
    Family(
        name="relu",
        sae=ReLUSAE,
        train_config=ReLUTrainConfig,
        objective=ReLUObjective,
        sparsity_knobs=("l1_coefficient",),
    )
)
