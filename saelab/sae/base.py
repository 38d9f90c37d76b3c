"""The shared SAE base: parameters, initialisation, the output record and the decoder constraint.

Everything here is plain torch (no Lightning, no Hydra) so an exported SAE runs anywhere.
Conventions (docs/maths.md §0): explicit parameters ``W_enc [d_in, d_sae]``, ``b_enc [d_sae]``,
``W_dec [d_sae, d_in]``, ``b_dec [d_in]`` in the orientation of Gemma Scope and SAELens files;
reconstruction loss is the squared error summed over the model dimensions, averaged over the batch.

Any family is a transcoder with ``transcoder=True`` (docs/transcoders.md): it reads x and is
trained to write another activation y of the same width (an MLP's input and output), so b_dec
lives in y's space and is never subtracted from x, and ``skip_connection=True`` adds an affine
skip ``x @ W_skip.T`` (``W_skip [d_in, d_in]``, zero at init) to the output.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from operator import attrgetter
from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class SAEConfig:
    """Shape and initialisation shared by every family. Subclasses add the family's knobs."""

    d_in: int
    """Width of the activations the SAE reads (the model's d_model or attention width)."""
    d_sae: int | None = None
    """Number of latents M. ``None`` means ``d_in * expansion_factor``."""
    expansion_factor: int = 8
    """Used only when ``d_sae`` is None."""
    transcoder: bool = False
    """Read one activation and write another (rows are ``[x | y]``, 2 * d_in wide)."""
    skip_connection: bool = False
    """A transcoder's affine skip: the output gains ``x @ W_skip.T``."""

    architecture: ClassVar[str] = "base"

    def __post_init__(self) -> None:
        # Each key is checked before anything is derived from it, so a bad value is named as
        # typed (expansion_factor=0 must not surface as d_sae=0 or a division by zero).
        require_positive_int(self, "d_in")
        if self.d_sae is None:
            require_positive_int(self, "expansion_factor")
            self.d_sae = self.d_in * self.expansion_factor
        require_positive_int(self, "d_sae")
        if self.skip_connection and not self.transcoder:
            raise ValueError(
                f"{type(self).__name__}.skip_connection=true needs a transcoder: an SAE's skip "
                "would learn the identity. Use site=transcoder, or drop sae.skip_connection."
            )

    def to_dict(self) -> dict:
        return {"architecture": self.architecture, **dataclasses.asdict(self)}


def _require(cfg: object, key: str, ok: bool, allowed: str) -> None:
    """Raise a ValueError naming the config key, its value and what is allowed."""
    if not ok:
        raise ValueError(
            f"{type(cfg).__name__}.{key}={attrgetter(key)(cfg)!r} is invalid: it must be {allowed}."
        )


def require_positive_int(cfg: object, key: str) -> None:
    value = getattr(cfg, key)
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool) and value > 0
    _require(cfg, key, ok, "a positive integer")


def require_choice(cfg: object, key: str, choices: tuple[str, ...]) -> None:
    value = attrgetter(key)(cfg)  # a dotted key reads a nested group's field
    _require(cfg, key, value in choices, "one of " + ", ".join(repr(c) for c in choices))


def require_nonnegative(cfg: object, *keys: str) -> None:
    for key in keys:
        _require(cfg, key, getattr(cfg, key) >= 0, "a number >= 0")


class SAEOutput(NamedTuple):
    """What every SAE's forward returns, so training loops can log generically.

    ``losses`` holds the weighted terms whose sum is the training loss; ``metrics`` holds
    detached diagnostics (L0 and family-specific numbers).
    """

    x_hat: Tensor
    feature_acts: Tensor
    losses: dict[str, Tensor]
    metrics: dict[str, Tensor]

    @property
    def loss(self) -> Tensor:
        return sum(self.losses.values())  # type: ignore[return-value]


def affine(x: Tensor, W: Tensor, b: Tensor) -> Tensor:
    """x @ W + b. For a batch of rows, ``addmm`` writes the bias into the product's output
    instead of allocating a second [B, d_sae] tensor for the sum."""
    if x.dim() == 2:
        return torch.addmm(b, x, W)
    return x @ W + b


def reconstruction_loss(x: Tensor, x_hat: Tensor) -> Tensor:
    """mean_b sum_d (x - x_hat)^2 (docs/maths.md §0; a per-element mean would rescale lambda by
    d_in). As the summed ``mse_loss`` over the number of rows: one fused op each way instead of
    four with two temporaries (docs/speed.md)."""
    return F.mse_loss(x_hat, x, reduction="sum") / (x.numel() // x.shape[-1])


class SAE(nn.Module):
    """Base class of the inference SAEs: parameters, ``encode``/``decode``, the normalisation fold
    and the decoder constraint; what an exported SAE needs and nothing else. How a family TRAINS
    (its losses, estimators and training state) is its ``Objective`` (objective.py), which the
    forward runs when the trainer passes one. A family overrides ``encode`` and, when it has
    parameters in activation units, ``_input_scaled_parameters``."""

    config_class: ClassVar[type[SAEConfig]] = SAEConfig
    has_b_enc: ClassVar[bool] = True
    """Gated replaces b_enc by its gate and magnitude biases."""
    saelens_architecture: ClassVar[str]
    """SAELens's name for this family (docs/interop.md)."""
    apply_b_dec_to_input: ClassVar[bool] = False
    """Whether encode reads x - b_dec (SAELens's flag of the same name, which defaults to true,
    so exports always state it)."""

    def __init__(self, cfg: SAEConfig):
        super().__init__()
        self.cfg = cfg
        self.d_in = cfg.d_in
        self.d_sae = int(cfg.d_sae)  # type: ignore[arg-type]
        W_dec = torch.empty(self.d_sae, self.d_in)
        # Kaiming-uniform, then each latent's direction (a row) to unit norm (docs/maths.md §0).
        nn.init.kaiming_uniform_(W_dec, a=math.sqrt(5))
        W_dec /= W_dec.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(W_dec)
        self.W_enc = nn.Parameter(W_dec.T.clone().contiguous())  # copied, not tied
        if self.has_b_enc:
            self.b_enc = nn.Parameter(torch.zeros(self.d_sae))
        self.b_dec = nn.Parameter(torch.zeros(self.d_in))
        self.transcoder = bool(cfg.transcoder)
        if self.transcoder:
            # b_dec is in the output's space: subtracting it from the input would mix spaces.
            self.apply_b_dec_to_input = False
        self.W_skip = (
            nn.Parameter(torch.zeros(self.d_in, self.d_in)) if cfg.skip_connection else None
        )

    # --- the maths ------------------------------------------------------------------------
    def pre_acts(self, x: Tensor) -> Tensor:
        return affine(x, self.W_enc, self.b_enc)

    def encode(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def decode(self, f: Tensor) -> Tensor:
        return affine(f, self.W_dec, self.b_dec)

    def add_skip(self, out: Tensor, x: Tensor) -> Tensor:
        """``out`` plus the skip's contribution; ``out`` itself without a skip (no extra pass
        over a [B, d_in] tensor for the SAEs that have none)."""
        return out if self.W_skip is None else out + x @ self.W_skip.T

    def reconstruct(self, x: Tensor) -> Tensor:
        """What the SAE writes for input x: ``decode(encode(x))``, plus the skip."""
        return self.add_skip(self.decode(self.encode(x)), x)

    def split(self, rows: Tensor) -> tuple[Tensor, Tensor]:
        """(input, target) of data rows: a transcoder's rows are ``[x | y]``; an SAE's target is
        its input."""
        if not self.transcoder:
            return rows, rows
        if rows.shape[-1] != 2 * self.d_in:
            raise ValueError(
                f"a transcoder with d_in={self.d_in} reads rows [input | target] "
                f"{2 * self.d_in} wide, got {rows.shape[-1]}: train it on site=transcoder data."
            )
        return rows[..., : self.d_in], rows[..., self.d_in :]

    def forward(self, x: Tensor, objective=None, target: Tensor | None = None, **step) -> SAEOutput:
        """Without ``objective``: the reconstruction (``encode``, ``decode``, the skip) and its
        squared error against ``target`` (None: x). With one (training):
        ``objective.loss(self, x, target=target, **step)``, the family's training loss. It runs
        inside this forward so that a sharded SAE (FSDP2) has its parameters gathered, and its
        gradients reduced, around it."""
        if objective is not None:
            return objective.loss(self, x, target=target, **step)
        target = x if target is None else target
        f = self.encode(x)
        x_hat = self.add_skip(self.decode(f), x)
        y2, f2 = target.reshape(-1, self.d_in), f.reshape(-1, self.d_sae)
        losses = {"mse": reconstruction_loss(y2, x_hat.reshape(-1, self.d_in))}
        return SAEOutput(x_hat, f, losses, {"l0": (f2 != 0).sum() / f2.shape[0]})

    # --- what an export is ------------------------------------------------------------------
    def export_form(self) -> SAE:
        """The SAE an export writes: itself, or the inference-equivalent SAE of another family
        (BatchTopK is saved as the JumpReLU SAE it is at inference)."""
        return self

    saelens_transcoder: ClassVar[str | None] = None
    """SAELens's name for this family as a transcoder, with ``{skip}`` where the skip variant
    adds ``skip_`` (None: SAELens has no such transcoder; docs/transcoders.md)."""

    def saelens_cfg(self) -> dict:
        """The cfg.json fields SAELens's loader needs for this family (``saelab.io.save_sae``)."""
        architecture = self.saelens_architecture
        if self.transcoder:
            name = self.saelens_transcoder
            if name is None and self.W_skip is None:
                name = self.saelens_architecture  # the same function, read as an SAE
            architecture = (
                name.format(skip="skip_" if self.W_skip is not None else "")
                if name is not None
                else f"saelab_{self.cfg.architecture}_skip_transcoder"
            )
        cfg = {"architecture": architecture, "apply_b_dec_to_input": self.apply_b_dec_to_input}
        if self.transcoder:
            cfg["d_out"] = self.d_in
        return cfg

    # --- constraint (docs/maths.md §0) ------------------------------------------------------------
    @torch.no_grad()
    def remove_parallel_decoder_grad(self) -> None:
        """Drop from each decoder row's gradient its component along the row, so the gradient
        only rotates a unit-norm row (Adam rescales coordinates, so its step is not exactly
        tangent: the renormalisation after the step keeps rows at unit norm)."""
        if self.W_dec.grad is None:
            return
        W, G = self.W_dec, self.W_dec.grad
        # Row-wise ops only (rows stay whole on each rank under FSDP2, see saelab/lit/sharding.py);
        # one in-place update of the gradient instead of building the correction out of place.
        coef = (G * W).sum(1, keepdim=True) / W.pow(2).sum(1, keepdim=True)
        G.addcmul_(W, coef, value=-1)

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)

    # --- normalisation fold (docs/maths.md §0) -----------------------------------------------------
    def _input_scaled_parameters(self) -> tuple[str, ...]:
        """Names of parameters/buffers measured in activation units (biases, thresholds)."""
        return ("b_enc", "b_dec")

    @torch.no_grad()
    def fold_activation_scale(self, scale: float) -> None:
        """Make an SAE trained on ``x / scale`` act on raw ``x``: every quantity in activation
        units is multiplied by ``scale``; weights are unchanged, so decoder rows stay unit norm.
        Pre-activations then scale by ``scale``, which keeps TopK order and threshold tests."""
        for name in self._input_scaled_parameters():
            getattr(self, name).mul_(scale)

    @torch.no_grad()
    def fold_transcoder_scales(self, input_scale: float, target_scale: float) -> None:
        """Make a transcoder trained on ``x / s_in -> y / s_out`` act on raw x and write raw y
        (docs/transcoders.md): ``W_enc`` and ``W_skip`` times ``s_out / s_in``, then every
        quantity in activation units times ``s_out``. Pre-activations become ``s_out`` times
        the trained ones, so selections are unchanged and decoder rows stay unit norm."""
        ratio = target_scale / input_scale
        self.W_enc.mul_(ratio)
        if self.W_skip is not None:
            self.W_skip.mul_(ratio)
        self.fold_activation_scale(target_scale)

    @property
    def device(self) -> torch.device:
        return self.W_dec.device

    @property
    def dtype(self) -> torch.dtype:
        return self.W_dec.dtype
