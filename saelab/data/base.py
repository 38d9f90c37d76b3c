"""The contract between activation sources and the SAE LightningModules.

A source's config dataclass has ``build()`` returning one of these. The LightningModule reads
``batch_size`` (tokens per step, for dead-latent windows) and calls ``sample_activations`` once on
fit start (normalisation scale, data-dependent init); batches are float32 ``[batch_size, d_in]``.
"""

from __future__ import annotations

import lightning.pytorch as pl
from torch import Tensor


class ActivationSource(pl.LightningDataModule):
    """Base for every activation source; ``self.cfg`` has ``d_in`` and ``batch_size``."""

    @property
    def d_in(self) -> int:
        return self.cfg.d_in

    @property
    def batch_size(self) -> int:
        return self.cfg.batch_size

    def sample_activations(self, n_tokens: int) -> Tensor:
        """The first ``n_tokens`` training activations, float32 [n, d_in], deterministic."""
        raise NotImplementedError
