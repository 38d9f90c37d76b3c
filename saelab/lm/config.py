"""The ``model`` config group's schema: which causal LM to read activations from.

A preset names a model and its defaults; never its shape. Depth and site widths are read from
the model's own config (``shape.py``); ``n_layers``/``d_model``/``d_attn`` exist only to state
the shape of a hub model that this machine can neither find in its cache nor reach.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ModelConfig:
    name_or_path: str = "tiny-gemma-2"
    """``tiny-gemma-2`` (embedded), a local save_pretrained folder, or a hub id."""
    revision: str | None = None
    """Hub revision (branch, tag or commit); part of the activation-cache key."""
    n_layers: int | None = None
    """Decoder layers. None = read from the model's config (leave it so unless unreachable)."""
    d_model: int | None = None
    """Width of the residual stream and of the ``mlp`` site. None = read from the model."""
    d_attn: int | None = None
    """Width of the ``attn`` site (heads x head_dim, the input of o_proj). None = read."""
    dtype: str = "float32"
    context_length: int = 256
    prepend_bos: bool = True
    trust_remote_code: bool = False
    """Never run code from a model repository unless the user asks for it."""

    def __post_init__(self) -> None:
        for key in ("n_layers", "d_model", "d_attn", "context_length"):
            value = getattr(self, key)
            if value is not None and value <= 0:
                raise ValueError(f"model.{key}={value!r} is invalid: it must be > 0.")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(
                f"model.dtype={self.dtype!r} is invalid: use float32, bfloat16 or float16."
            )
