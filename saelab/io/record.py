"""The plain record every SAE reader returns: saelab's architecture name, config fields and
tensors in saelab's names and orientation, whatever format the file was in.

Readers translate a format into this record (renaming tensors, transposing ``nn.Linear``
weights, folding a pre-encoder bias or decoder norms into the encoder) and check it with
``check_tensors``; ``saelab.sae.load_sae`` builds the SAE from it. Nothing here knows the SAE
classes, so the formats stay plain (io never imports saelab.sae).

Tensor names (docs/maths.md §0): ``W_enc [d_in, d_sae]``, ``W_dec [d_sae, d_in]``, ``b_enc``
(Gated: ``b_gate``, ``b_mag``, ``r_mag``) ``[d_sae]``, ``b_dec [d_in]``, ``threshold`` (JumpReLU:
theta itself, per latent).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class SAEFile:
    architecture: str
    """saelab's family name (``relu``, ``gated``, ``jumprelu``, ``topk``, ``batchtopk``)."""
    config: dict
    """Config fields of that family (at least ``d_in`` and ``d_sae``)."""
    tensors: dict[str, Tensor]
    """In saelab's names and orientation (see the module docstring)."""
    source: str
    """The format it was read from, in words (for messages)."""
    path: str = ""
    metadata: dict = field(default_factory=dict)
    """What the file says about where the SAE reads (model_name, hook_name, hook_layer, ...)."""
    config_prefix: str = ""
    """Where the config fields sit in the file (``saelab_config.``), for messages."""


def as_float(tensors: dict[str, Tensor], where: str) -> dict[str, Tensor]:
    """float32 copies: saelab's SAEs hold float32 weights (bf16/fp16 convert exactly). Integer
    or bool tensors are refused: cast, they would load as weights nobody trained."""
    for name, tensor in tensors.items():
        if not tensor.is_floating_point():
            dtype = str(tensor.dtype).removeprefix("torch.")
            raise ValueError(
                f"{where}: {name} holds {dtype} values; SAE weights must be floats (float16, "
                "bfloat16, float32 or float64). The file is damaged or not an SAE's weights."
            )
    return {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in tensors.items()}


def fold_into_encoder_bias(b_enc: Tensor, W_enc: Tensor, shift: Tensor) -> Tensor:
    """b_enc + shift @ W_enc, in float64: moves an input offset into the encoder bias, since
    (x + shift) @ W_enc + b_enc == x @ W_enc + (b_enc + shift @ W_enc)."""
    return (b_enc.double() + shift.double() @ W_enc.double()).float()


def check_tensors(tensors: dict[str, Tensor], where: str) -> None:
    """Shapes agree with W_enc, every value is finite, thresholds are positive; a ValueError
    naming the file and the tensor otherwise (a NaN weight must never load silently)."""
    if "W_enc" not in tensors or tensors["W_enc"].dim() != 2:
        raise ValueError(f"{where}: no 2-D encoder weight W_enc [d_in, d_sae] was found.")
    d_in, d_sae = tensors["W_enc"].shape
    expected = {"W_dec": (d_sae, d_in), "b_dec": (d_in,), "W_skip": (d_in, d_in)}
    expected.update({k: (d_sae,) for k in ("b_enc", "b_gate", "b_mag", "r_mag")})
    for name, tensor in tensors.items():
        want = expected.get(name)
        if name == "threshold":
            want = None if tensor.dim() == 0 else (d_sae,)  # BatchTopK keeps one global threshold
        if want is not None and tuple(tensor.shape) != want:
            raise ValueError(
                f"{where}: {name} has shape {tuple(tensor.shape)}, expected {want} "
                f"(d_in={d_in}, d_sae={d_sae} from W_enc)."
            )
        if not torch.isfinite(tensor).all():
            bad = int((~torch.isfinite(tensor)).sum())
            raise ValueError(
                f"{where}: {name} holds {bad} non-finite value(s) (NaN or inf); the file is "
                "corrupt or the SAE diverged in training."
            )
    if "threshold" in tensors and not (tensors["threshold"] > 0).all():
        low = float(tensors["threshold"].min())
        raise ValueError(
            f"{where}: every threshold must be > 0 (a JumpReLU theta, or a global threshold "
            f"that has been estimated); the smallest is {low!r}."
        )


def require_keys(cfg: dict, keys: tuple[str, ...], where: str, what: str) -> None:
    """A ValueError naming the missing config field(s), not a bare KeyError."""
    missing = [k for k in keys if k not in cfg]
    if missing:
        raise ValueError(f"{where}: {what} lacks the field(s) {missing}; it has {sorted(cfg)}.")


def require_int(cfg: dict, key: str, where: str, low: int = 1) -> int:
    value = cfg.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{where}: {key}={value!r} is invalid: it must be an integer >= {low}.")
    return value
