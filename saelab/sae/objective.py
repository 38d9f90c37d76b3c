"""The training side of a family: its ``Objective`` (the loss, its estimators, its training knobs
and its training state), apart from the inference SAE it trains.

An objective is a plain ``nn.Module``: its buffers (an L0 controller's integral, a bandwidth
estimate, ...) are in checkpoints and never in exports. The trainer (saelab/lit/base.py) calls
``sae(x, objective=obj, step=Step(...))``, and the SAE's forward hands over to ``obj.loss``, so
a sharded SAE has its parameters gathered around the whole loss.

The step's skeleton lives here once: a family supplies its encoder on a dense path and, where it
has one, on a sparse path (``saelab/sae/sparse.py``: only the encoder product dense); decoding,
the reconstruction loss, AuxK and the features returned are the same for every family.

Across data-parallel ranks, training state stays identical through ONE channel, ``Sync``: the
objective asks it for means and gathers, and the trainer backs it with its Lightning strategy.
Alone (a notebook, a test) the default ``Sync`` is the one process itself.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from .auxk import auxk
from .base import SAE, SAEOutput, reconstruction_loss
from .sparse import Selection, decode_selected, use_sparse


class Sync:
    """Collectives over the data-parallel ranks. This one is a single process; the trainer's
    (saelab/lit/base.py) wraps its Lightning strategy."""

    world_size = 1

    def mean(self, t: Tensor) -> Tensor:
        """``t`` averaged over ranks (a new tensor)."""
        return t

    def all_gather(self, t: Tensor) -> Tensor:
        """Every rank's ``t`` stacked on a new first dimension [world, *t.shape]."""
        return t.unsqueeze(0)

    def any(self, t: Tensor) -> Tensor:
        """Element-wise OR of a boolean tensor over ranks."""
        return t

    def assign(self, target: Tensor, value: Tensor) -> None:
        """``target := value`` (a full tensor), also for a sharded parameter."""
        with torch.no_grad():
            target.copy_(value.to(target.device, target.dtype))


@dataclass
class Step:
    """What the trainer tells the objective about this training step."""

    index: int = 0
    """The optimiser step (0-based)."""
    total: int = 0
    """Optimiser steps in the run (0: not a scheduled run; step-scheduled warm-ups are off)."""
    sparsity_scale: float = 1.0
    """Warm-up factor of the family's sparsity coefficient."""
    dead_mask: Tensor | None = None
    """[d_sae] latents the trainer counts as dead (AuxK trains them)."""
    tokens_since_fired: Tensor | None = None
    """[d_sae] tokens since each latent last fired, as the trainer counts them (None: unknown)."""
    sparse: bool = False
    """Take the sparse path (``Objective.wants_sparse``): the same function, other kernels."""
    target: Tensor | None = None
    """[B, d_in] what the output is trained to match, minus the skip (``Objective.loss`` sets
    it): the input x for an SAE, y - x @ W_skip.T for a transcoder. Terms that reconstruct
    (Matryoshka's prefixes, Gated's auxiliary term) read it, never x."""


class Encoded(NamedTuple):
    """A family's encoder output for one step, on the dense path (``f`` set, ``sel`` None) or
    the sparse one (``sel`` and its ``acts`` set)."""

    l0: Tensor
    """Mean active latents per row (a scalar, may carry the L0 estimator's graph)."""
    terms: dict[str, Tensor]
    """The family's weighted loss terms besides the reconstruction (sparsity, aux)."""
    f: Tensor | None = None
    sel: Selection | None = None
    acts: Tensor | None = None
    z: Tensor | None = None
    """Pre-activations for AuxK (with their graph on the dense path; any on the sparse one)."""
    aux_bias: Tensor | None = None
    """The bias b of z = x @ W_enc + b (AuxK's sparse encoder); None = the SAE's b_enc."""
    metrics: dict[str, Tensor] = {}


class Objective(nn.Module):
    """Base class. A family overrides ``encode_dense`` (and ``encode_sparse`` when it has a
    sparse path) and the hooks it needs."""

    unit_norm_decoder: bool = True
    """Training keeps decoder rows at unit norm (docs/maths.md §0)."""
    init_tokens: int = 0
    """Rows of (normalised) data ``init_from_data`` wants; 0 = none."""
    has_sparse_path: bool = True

    def __init__(self, cfg: Any):
        super().__init__()
        self.cfg = cfg
        self.sync: Sync = Sync()

    # --- set-up ------------------------------------------------------------------------------
    def init_sae(self, sae: SAE) -> None:
        """Initialise parameters the training config sets (called once, at construction)."""

    def init_from_data(self, sae: SAE, x: Tensor, target: Tensor | None = None) -> None:
        """Data-dependent initialisation from the first ``init_tokens`` normalised rows: the
        input x and what the output reconstructs (None: x)."""

    def lr_scales(self) -> dict[str, float]:
        """Learning-rate multipliers of named SAE parameters (each gets its own Adam group); the
        rest train at the configured lr."""
        return {}

    def update_scales(self, index: int, total: int) -> dict[str, float]:
        """Named SAE parameters whose optimiser update at step ``index`` of ``total`` is scaled
        by a factor in [0, 1) (0: left as they are); the rest take the full step. A function of
        the step alone, so a resumed run scales what the uninterrupted one scaled."""
        return {}

    @property
    def aux_k(self) -> int:
        """Dead latents AuxK trains at once (the family's ``aux_k``)."""
        return self.cfg.aux_k

    # --- the step ----------------------------------------------------------------------------
    def wants_sparse(self, sae: SAE, device: torch.device, density: float | None) -> bool:
        """Whether this step takes the sparse path, given the fraction of latents active in the
        last one (None: unknown). A function of checkpointed state only, so a resumed run takes
        the path the uninterrupted one took."""
        return self.has_sparse_path and use_sparse(device, density)

    def encode_dense(self, sae: SAE, x: Tensor, step: Step) -> Encoded:
        raise NotImplementedError

    def encode_sparse(self, sae: SAE, x: Tensor, step: Step) -> Encoded:
        raise NotImplementedError

    def loss(
        self, sae: SAE, x: Tensor, step: Step | None = None, target: Tensor | None = None
    ) -> SAEOutput:
        """The family's training loss on a batch x [..., d_in] (``step`` None: a default step),
        reconstructing ``target`` (None: x itself; a transcoder's y)."""
        step = step or Step()
        x2 = x.reshape(-1, sae.d_in)
        y2 = x2 if target is None else target.reshape(-1, sae.d_in)
        # With a skip, the dictionary's part of the output is trained on what the skip leaves;
        # the skip's gradient flows through y - skip(x) (docs/transcoders.md).
        skip = None if sae.W_skip is None else x2 @ sae.W_skip.T
        step = replace(step, target=y2 if skip is None else y2 - skip)
        if step.sparse:
            enc = self.encode_sparse(sae, x2, step)
            x_hat = decode_selected(enc.sel, enc.acts, sae.W_dec) + sae.b_dec
        else:
            enc = self.encode_dense(sae, x2, step)
            x_hat = sae.decode(enc.f)
        if skip is not None:
            x_hat = x_hat + skip
        losses = {"mse": reconstruction_loss(y2, x_hat), **enc.terms}
        aux_coefficient = getattr(self.cfg, "aux_coefficient", 0.0)
        if step.dead_mask is not None and aux_coefficient > 0:
            bias = sae.b_enc if enc.aux_bias is None else enc.aux_bias
            losses["auxk"] = aux_coefficient * auxk(
                x2,
                x_hat,
                enc.z,
                step.dead_mask,
                sae.W_enc,
                bias,
                sae.W_dec,
                self.aux_k,
                target=y2,
            )
        f, sel, acts, metrics, l0 = enc.f, enc.sel, enc.acts, enc.metrics, enc.l0
        if f is None:  # sparse: the dense features only once z is gone (never two [B, d_sae])
            del enc
            f = sel.dense(acts, (x2.shape[0], sae.d_sae))
        lead = x.shape[:-1]
        return SAEOutput(
            x_hat.view(*lead, sae.d_in),
            f.view(*lead, sae.d_sae),
            losses,
            {"l0": l0.detach(), **metrics},
        )

    # --- after the step ----------------------------------------------------------------------
    def after_step(self, sae: SAE, out: SAEOutput, step: Step) -> dict[str, Tensor]:
        """After the loss: update training state from the step's output; returns scalars to
        log (``train/<name>``)."""
        return {}

    def after_optimizer_step(self, sae: SAE) -> None:
        """After the optimiser step and the decoder constraint."""
