"""Synthetic activations with known ground truth: sparse combinations of unit feature directions in
superposition (more features than dimensions), so an SAE's recovery can be checked exactly.

Token t is ``x_t = sum_i a_ti m_ti F_i + noise`` with ``F_i`` a random unit vector in R^d_in,
``a_ti ~ Bernoulli(p_i)`` and magnitudes ``m_ti ~ |N(magnitude_mean, magnitude_std)|``. The
probabilities p_i are log-uniform over a ``prob_spread``-fold range, rescaled so that the expected
number of active features per token (the true L0) equals ``mean_l0``.

Options (all off by default, so the default data is unchanged), to look more like LM activations:

- ``frequencies="power_law"``: p_i proportional to rank^-zipf_exponent (Zipf-like: a few very
  common features and a long tail of rare ones), instead of log-uniform.
- ``cluster_size > 1``: features come in clusters of that many consecutive indices that fire
  together: a cluster switches on with probability q_c (the frequency law is over clusters), and
  then each member fires with probability ``cofire_prob``; so p_i = q_c * cofire_prob, and two
  members of one cluster have firing correlation cofire_prob (1 - q_c) / (1 - q_c cofire_prob).
- ``magnitudes="lognormal"``: m = magnitude_mean * exp(lognormal_sigma * N(0, 1) -
  lognormal_sigma^2 / 2), heavy-tailed with mean magnitude_mean.
- ``outlier_fraction > 0``: massive-activation tokens (Sun et al. 2024): that fraction of tokens
  gets, on top of its features, a vector of norm ~``outlier_scale`` times the median token norm
  along one fixed direction spanning ``outlier_dims`` coordinate axes (the same for every such
  token, as massive activations sit in a few fixed dimensions). Not a true feature: recovery is
  scored on the n_features only.

``pairs=True`` is a transcoder's data (docs/transcoders.md): each row is ``[x | y]`` with
``x = sum_i a_ti m_ti F_i`` and ``y = sum_i a_ti m_ti G_i``, both ``d_in / 2`` wide, so the map
from x to y is sparse and known; the true features a transcoder's decoder should learn are the
output directions ``G_i``.

Tokens come in blocks of ``block_tokens``; block j of a split is a pure function of
(seed, split, j), and global batch g is blocks ``g*k .. (g+1)*k - 1``. Any rank, any resumed run,
any order of reads produces the same tokens, there is nothing to store on disk, and when the block
divides the batch, w DDP ranks with batch B read exactly what one process with batch w*B reads.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from saelab.data.base import ActivationSource
from saelab.data.stream import BatchStream


def _batch_seed(seed: int, split: str, index: int) -> int:
    """A well-mixed 32-bit seed per (seed, split, batch). torch's CPU generator keeps only the
    low 32 bits of a seed, so offsets like ``index + 2**40`` would silently collide."""
    digest = hashlib.blake2b(f"{seed}/{split}/{index}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little")


FREQUENCIES = ("log_uniform", "power_law")
MAGNITUDES = ("folded_normal", "lognormal")


def cluster_probs(cfg: SyntheticDataConfig, log_uniform: Tensor) -> Tensor:
    """Firing probability of each cluster (of each feature when cluster_size = 1), scaled so the
    expected number of active features is mean_l0. ``log_uniform`` holds the uniform draws the
    log-uniform law uses (ignored by the power law, which has no randomness)."""
    n_clusters = cfg.n_features // cfg.cluster_size
    if cfg.frequencies == "power_law":
        ranks = torch.arange(1, n_clusters + 1, dtype=torch.float32)
        weights = ranks.pow(-cfg.zipf_exponent)
    else:
        weights = (log_uniform * math.log(cfg.prob_spread)).exp()
    per_cluster = cfg.cluster_size * (cfg.cofire_prob if cfg.cluster_size > 1 else 1.0)
    return weights * (cfg.mean_l0 / per_cluster / weights.sum())


@dataclass
class SyntheticDataConfig:
    d_in: int = 64
    """Dimension of the activations (with ``pairs``: of a row, input and target d_in / 2 each)."""
    pairs: bool = False
    """Rows [x | y] of a sparse map with known output directions (site=transcoder)."""
    n_features: int = 512
    """Number of true features (8x d_in by default: features in superposition)."""
    mean_l0: float = 8.0
    """Expected number of active true features per token."""
    prob_spread: float = 4.0
    """Ratio between the most and least frequent feature's firing probability."""
    frequencies: str = "log_uniform"
    """How firing probabilities fall off over features: 'log_uniform' (over a prob_spread-fold
    range) or 'power_law' (p proportional to rank^-zipf_exponent)."""
    zipf_exponent: float = 1.0
    """Exponent of the power law (frequencies='power_law'); over clusters when cluster_size > 1."""
    cluster_size: int = 1
    """Features per co-firing cluster (1: every feature fires independently). Must divide
    n_features."""
    cofire_prob: float = 0.5
    """Probability that a member of an active cluster fires (cluster_size > 1)."""
    magnitudes: str = "folded_normal"
    """'folded_normal': |N(magnitude_mean, magnitude_std)|; 'lognormal': mean magnitude_mean,
    log-std lognormal_sigma."""
    magnitude_mean: float = 1.0
    magnitude_std: float = 0.25
    lognormal_sigma: float = 1.0
    """Std of log(magnitude) (magnitudes='lognormal')."""
    outlier_fraction: float = 0.0
    """Fraction of tokens that carry a massive activation (0: none)."""
    outlier_scale: float = 30.0
    """Norm of the massive activation as a multiple of the median norm of ordinary tokens (each
    outlier token draws its multiple uniformly within +-20% of this)."""
    outlier_dims: int = 4
    """Number of coordinate axes the massive-activation direction spans."""
    noise_std: float = 0.0
    """Std of isotropic Gaussian noise added to every token (per dimension)."""
    batch_size: int = 4096
    train_tokens: int = 1_000_000_000
    """Size of the (virtual) training split; training length is set by trainer.max_steps."""
    val_tokens: int = 65_536
    block_tokens: int | None = None
    """Tokens generated per seeded block; None = batch_size (one block per batch). Set it to a
    divisor of batch_size (e.g. 256) so that runs with different batch sizes or numbers of DDP
    ranks see the same token stream."""
    seed: int = 0
    prefetch_batches: int = 0
    """Batches generated ahead in a background thread (0: generate in the training loop)."""

    def __post_init__(self) -> None:
        checks = {
            "d_in": self.d_in > 0 and (not self.pairs or self.d_in % 2 == 0),
            "n_features": self.n_features > 0,
            "mean_l0": 0 < self.mean_l0 <= self.n_features,
            "prob_spread": self.prob_spread >= 1,
            "frequencies": self.frequencies in FREQUENCIES,
            "zipf_exponent": self.zipf_exponent >= 0,
            "cluster_size": self.cluster_size >= 1 and self.n_features % self.cluster_size == 0,
            "cofire_prob": 0 < self.cofire_prob <= 1,
            "magnitudes": self.magnitudes in MAGNITUDES,
            "magnitude_mean": self.magnitude_mean > 0,
            "lognormal_sigma": self.lognormal_sigma >= 0,
            "outlier_fraction": 0 <= self.outlier_fraction < 1,
            "outlier_scale": self.outlier_scale > 0,
            "outlier_dims": 0 < self.outlier_dims <= self.d_in,
            "magnitude_std": self.magnitude_std >= 0,
            "noise_std": self.noise_std >= 0,
            "batch_size": self.batch_size > 0,
            "train_tokens": self.train_tokens >= self.batch_size,
            "val_tokens": self.val_tokens >= 0,
            "block_tokens": self.block_tokens is None
            or (self.block_tokens > 0 and self.batch_size % self.block_tokens == 0),
            "prefetch_batches": self.prefetch_batches >= 0,
        }
        for key, ok in checks.items():
            if not ok:
                raise ValueError(
                    f"data.{key}={getattr(self, key)!r} is invalid (see SyntheticDataConfig: "
                    "sizes must be positive (d_in even with pairs), mean_l0 in (0, n_features], prob_spread >= 1, "
                    f"frequencies in {FREQUENCIES}, magnitudes in {MAGNITUDES}, zipf_exponent "
                    ">= 0, cluster_size must divide n_features, cofire_prob in (0, 1], "
                    "outlier_fraction in [0, 1), outlier_dims in [1, d_in], "
                    "train_tokens >= batch_size, block_tokens must divide batch_size)."
                )
        if self.frequencies == "log_uniform":
            cofire = self.cofire_prob if self.cluster_size > 1 else 1.0
            max_p = self.mean_l0 / self.n_features * self.prob_spread / cofire
            if max_p > 1:
                raise ValueError(
                    f"data.mean_l0={self.mean_l0} with n_features={self.n_features} and "
                    f"prob_spread={self.prob_spread} needs firing probabilities above 1; lower "
                    "mean_l0 or prob_spread."
                )
        else:
            max_p = float(cluster_probs(self, torch.rand(0)).max())
            if max_p > 1:
                raise ValueError(
                    f"data.zipf_exponent={self.zipf_exponent} with mean_l0={self.mean_l0}, "
                    f"n_features={self.n_features}, cluster_size={self.cluster_size} and "
                    f"cofire_prob={self.cofire_prob} needs a firing probability of {max_p:.2f} > 1 "
                    "for the commonest feature; lower data.zipf_exponent or data.mean_l0, or raise "
                    "data.cofire_prob."
                )

    def build(self) -> SyntheticDataModule:
        return SyntheticDataModule(self)


class SyntheticFeatures:
    """The ground truth: directions ``features [n_features, d_in]`` and probabilities ``probs``."""

    def __init__(self, cfg: SyntheticDataConfig):
        self.cfg = cfg
        g = torch.Generator().manual_seed(cfg.seed)
        self.features = torch.nn.functional.normalize(
            torch.randn(cfg.n_features, cfg.d_in, generator=g), dim=1
        )
        n_clusters = cfg.n_features // cfg.cluster_size
        if cfg.frequencies == "log_uniform" and cfg.cluster_size == 1:
            # The original draw, kept operation for operation so default data stays bit-identical.
            log_p = torch.rand(cfg.n_features, generator=g) * math.log(cfg.prob_spread)
            probs = log_p.exp()
            self.probs = probs * (cfg.mean_l0 / probs.sum())
            self.cluster_probs = self.probs
        else:
            uniform = torch.rand(n_clusters, generator=g)
            self.cluster_probs = cluster_probs(cfg, uniform)
            cofire = cfg.cofire_prob if cfg.cluster_size > 1 else 1.0
            self.probs = self.cluster_probs.repeat_interleave(cfg.cluster_size) * cofire
        self.outlier_direction: Tensor | None = None
        self.inputs: Tensor | None = None
        if cfg.pairs:
            # Input and output directions in their own halves; own generator, so the options
            # never shift the draws above.
            gp = torch.Generator().manual_seed(_batch_seed(cfg.seed, "pairs", 0))
            half = cfg.d_in // 2
            self.inputs = torch.nn.functional.normalize(
                torch.randn(cfg.n_features, half, generator=gp), dim=1
            )
            outputs = torch.nn.functional.normalize(
                torch.randn(cfg.n_features, half, generator=gp), dim=1
            )
            self.features = torch.cat([self.inputs, outputs], dim=1)
        if cfg.outlier_fraction > 0:
            # Its own generator: the options never shift the draws of the features above.
            go = torch.Generator().manual_seed(_batch_seed(cfg.seed, "outliers", 0))
            dims = torch.randperm(cfg.d_in, generator=go)[: cfg.outlier_dims]
            direction = torch.zeros(cfg.d_in)
            direction[dims] = 0.5 + torch.rand(cfg.outlier_dims, generator=go)
            self.outlier_direction = direction / direction.norm()
            self.outlier_dim_index = dims.sort().values
            ordinary, _ = self._sample_ordinary(8192, go)
            self.median_norm = float(ordinary.norm(dim=1).median())

    def sample(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """``n`` tokens and their true feature coefficients [n, n_features]."""
        x, coeffs = self._sample_ordinary(n, generator)
        if self.outlier_direction is not None:
            cfg = self.cfg
            massive = torch.rand(n, generator=generator) < cfg.outlier_fraction
            multiple = cfg.outlier_scale * (0.8 + 0.4 * torch.rand(n, generator=generator))
            size = massive * multiple * self.median_norm
            x = x + size[:, None] * self.outlier_direction
        return x, coeffs

    def _sample_ordinary(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        cfg = self.cfg
        if cfg.cluster_size == 1:
            active = torch.rand(n, cfg.n_features, generator=generator) < self.probs
        else:
            on = torch.rand(n, len(self.cluster_probs), generator=generator) < self.cluster_probs
            member = torch.rand(n, cfg.n_features, generator=generator) < cfg.cofire_prob
            active = on.repeat_interleave(cfg.cluster_size, dim=1) & member
        # Draw magnitudes only for the ~mean_l0 active entries per token, not all n_features.
        rows, cols = active.nonzero(as_tuple=True)
        normal = torch.randn(rows.numel(), generator=generator)
        if cfg.magnitudes == "lognormal":
            sigma = cfg.lognormal_sigma
            magnitudes = cfg.magnitude_mean * (sigma * normal - sigma**2 / 2).exp()
        else:
            magnitudes = (cfg.magnitude_mean + cfg.magnitude_std * normal).abs()
        coeffs = torch.zeros(n, cfg.n_features)
        coeffs[rows, cols] = magnitudes
        x = coeffs @ self.features
        if cfg.noise_std > 0:
            x = x + cfg.noise_std * torch.randn(x.shape, generator=generator)
        return x, coeffs


class SyntheticBatches:
    """The global batches of a split: batch g [batch_size, d_in] is blocks g*k .. (g+1)*k - 1."""

    def __init__(
        self,
        truth: SyntheticFeatures,
        split: str,
        n_tokens: int,
        batch_size: int,
        block_tokens: int | None = None,
    ):
        self.truth, self.split, self.batch_size = truth, split, batch_size
        self.block = block_tokens or batch_size
        self.n_batches = max(1, n_tokens // batch_size)

    def __len__(self) -> int:
        return self.n_batches

    def block_tokens(self, j: int) -> Tensor:
        generator = torch.Generator().manual_seed(_batch_seed(self.truth.cfg.seed, self.split, j))
        return self.truth.sample(self.block, generator)[0]

    def __getitem__(self, index: int) -> Tensor:
        if not 0 <= index < self.n_batches:
            raise IndexError(index)
        k = self.batch_size // self.block
        return torch.cat([self.block_tokens(j) for j in range(index * k, (index + 1) * k)])


class SyntheticStream(BatchStream):
    """A split's batches as a rank-sharded, resumable stream (every epoch the same order)."""

    def __init__(self, batches: SyntheticBatches, **kw):
        super().__init__(batches.batch_size, **kw)
        self.batches = batches
        self.global_batches = len(batches)
        self.check_ranks(f"data.{batches.split}_tokens holds {len(batches)} batch(es)")

    def identity(self) -> dict[str, Any]:
        cfg = self.batches.truth.cfg
        return {
            "seed": cfg.seed,
            "batch_size": self.batch_size,
            "block_tokens": self.batches.block,
            "split": self.batches.split,
        }

    def reader(self, epoch: int) -> Callable[[int], Tensor]:
        return self.batches.__getitem__


class SyntheticDataModule(ActivationSource):
    def __init__(self, cfg: SyntheticDataConfig):
        super().__init__()
        self.cfg = cfg
        self.truth = SyntheticFeatures(cfg)
        self.train_set = SyntheticBatches(
            self.truth, "train", cfg.train_tokens, cfg.batch_size, cfg.block_tokens
        )
        self.val_set = SyntheticBatches(
            self.truth, "val", cfg.val_tokens, cfg.batch_size, cfg.block_tokens
        )

    @property
    def true_features(self) -> Tensor:
        """[n_features, d] the directions a decoder should learn (with ``pairs``: the output
        directions G_i)."""
        if self.cfg.pairs:
            return self.truth.features[:, self.cfg.d_in // 2 :]
        return self.truth.features

    def sample_activations(self, n_tokens: int) -> Tensor:
        """The first ``n_tokens`` training tokens (rounded up to whole blocks): the same tokens
        whatever the batch size, when ``block_tokens`` is set."""
        block = self.train_set.block
        n_blocks = min(
            len(self.train_set) * (self.cfg.batch_size // block),
            max(1, math.ceil(n_tokens / block)),
        )
        return torch.cat([self.train_set.block_tokens(j) for j in range(n_blocks)])

    def _stream(self, split: SyntheticBatches, track: str) -> SyntheticStream:
        rank, world = self.rank_and_world()
        return SyntheticStream(
            split, rank=rank, world_size=world, prefetch=self.cfg.prefetch_batches, track=track
        )

    def train_dataloader(self) -> SyntheticStream:
        return self.attach_train_stream(self._stream(self.train_set, self.train_track()))

    def val_dataloader(self) -> SyntheticStream:
        return self._stream(self.val_set, "none")
