"""torchmetrics Metrics for SAEs (docs/maths.md §6). Each accumulates sums over tokens, so the
value over a whole evaluation set (and over DDP ranks: torchmetrics all-reduces the states) is
exact, not an average of per-batch ratios.

Only unmasked tokens should be passed in: callers drop BOS/EOS/pad rows before ``update``.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric


class L0(Metric):
    """Mean over tokens of the number of nonzero latents."""

    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("nonzero", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("tokens", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, feature_acts: Tensor) -> None:
        # count_nonzero: one pass, no [B, d_sae] boolean temporary
        self.nonzero += torch.count_nonzero(feature_acts)
        self.tokens += feature_acts.shape[0]

    def compute(self) -> Tensor:
        return (self.nonzero / self.tokens).float()


class FVU(Metric):
    """Fraction of variance unexplained, the standard definition:
    sum_tok sum_d (x - x_hat)^2 / sum_tok sum_d (x - mu)^2 with mu the per-dimension mean over the
    evaluated tokens. (SAELens' "explained variance" uses another denominator; not this one.)"""

    full_state_update = False

    def __init__(self, d_in: int, **kwargs):
        super().__init__(**kwargs)
        f64 = torch.float64
        self.add_state("sse", torch.tensor(0.0, dtype=f64), dist_reduce_fx="sum")
        self.add_state("sum_x", torch.zeros(d_in, dtype=f64), dist_reduce_fx="sum")
        self.add_state("sum_x2", torch.tensor(0.0, dtype=f64), dist_reduce_fx="sum")
        self.add_state("tokens", torch.tensor(0.0, dtype=f64), dist_reduce_fx="sum")

    def update(self, x: Tensor, x_hat: Tensor) -> None:
        x64 = x.double()
        self.sse += (x64 - x_hat.double()).pow(2).sum()
        self.sum_x += x64.sum(0)
        self.sum_x2 += x64.pow(2).sum()
        self.tokens += x.shape[0]

    def compute(self) -> Tensor:
        # sum (x - mu)^2 = sum x^2 - N |mu|^2, accumulated in float64 to avoid cancellation.
        total_var = self.sum_x2 - self.sum_x.pow(2).sum() / self.tokens
        return (self.sse / total_var).float()


class FeatureDensity(Metric):
    """Per-latent firing frequency: the fraction of tokens on which each latent is nonzero."""

    full_state_update = False

    def __init__(self, d_sae: int, **kwargs):
        super().__init__(**kwargs)
        self.add_state("fires", torch.zeros(d_sae, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("tokens", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, feature_acts: Tensor) -> None:
        self.fires += torch.count_nonzero(feature_acts, dim=0)
        self.tokens += feature_acts.shape[0]

    def compute(self) -> Tensor:
        return (self.fires / self.tokens.clamp_min(1)).float()


def density_summary(density: Tensor) -> dict[str, Tensor]:
    """Dead (never fired), dense >1% and high-frequency >10% (the paper's definition) fractions."""
    return {
        "dead_fraction": (density == 0).float().mean(),
        "dense_1pct_fraction": (density > 0.01).float().mean(),
        "dense_10pct_fraction": (density > 0.10).float().mean(),
    }


class RelativeReconstructionBias(Metric):
    """gamma = E||x_hat||^2 / E[x . x_hat]; below 1 means the SAE shrinks its reconstructions
    (typical of L1 penalties; Gated SAE paper, section 5)."""

    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("xhat_sq", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("x_dot_xhat", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, x: Tensor, x_hat: Tensor) -> None:
        x_hat64 = x_hat.double()
        self.xhat_sq += x_hat64.pow(2).sum()
        self.x_dot_xhat += (x.double() * x_hat64).sum()

    def compute(self) -> Tensor:
        return (self.xhat_sq / self.x_dot_xhat).float()


def feature_recovery(
    W_dec: Tensor, true_features: Tensor, threshold: float = 0.9
) -> dict[str, Tensor]:
    """For each true feature, its best cosine similarity with any learned decoder row.
    Returns MMCS (the mean of those maxima) and the fraction above ``threshold`` (recovered)."""
    learned = torch.nn.functional.normalize(W_dec.detach().float(), dim=1)
    true = torch.nn.functional.normalize(true_features.to(learned).float(), dim=1)
    best = (true @ learned.T).max(dim=1).values
    return {"mmcs": best.mean(), "recovered_fraction": (best > threshold).float().mean()}


class FeatureRecovery(Metric):
    """torchmetrics wrapper of :func:`feature_recovery`, for synthetic data with known features:
    averages the two numbers over ``update`` calls (normally one per evaluation)."""

    full_state_update = False

    def __init__(self, true_features: Tensor, threshold: float = 0.9, **kwargs):
        super().__init__(**kwargs)
        self.register_buffer("true_features", true_features.detach().clone())
        self.threshold = threshold
        for name in ("mmcs", "recovered_fraction", "count"):
            self.add_state(name, torch.tensor(0.0), dist_reduce_fx="mean")

    def update(self, W_dec: Tensor) -> None:
        result = feature_recovery(W_dec, self.true_features, self.threshold)
        self.mmcs += result["mmcs"].to(self.mmcs)
        self.recovered_fraction += result["recovered_fraction"].to(self.mmcs)
        self.count += 1

    def compute(self) -> dict[str, Tensor]:
        return {
            "mmcs": self.mmcs / self.count,
            "recovered_fraction": self.recovered_fraction / self.count,
        }
