"""The ``model`` config group's schema: which causal LM to read activations from."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ModelConfig:
    name_or_path: str = "tiny-gemma-2"
    """``tiny-gemma-2`` (embedded), a local save_pretrained folder, or a hub id."""
    revision: str | None = None
    """Hub revision (branch, tag or commit); part of the activation-cache key."""
    n_layers: int = 26
    d_model: int = 128
    """Width of the residual stream and of the ``mlp`` site."""
    d_attn: int = 128
    """Width of the ``attn`` site: heads x head_dim, the input of o_proj."""
    dtype: str = "float32"
    context_length: int = 256
    prepend_bos: bool = True
    trust_remote_code: bool = False
    """Never run code from a model repository unless the user asks for it."""

    def __post_init__(self) -> None:
        for key in ("n_layers", "d_model", "d_attn", "context_length"):
            if getattr(self, key) <= 0:
                raise ValueError(f"model.{key}={getattr(self, key)!r} is invalid: it must be > 0.")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(
                f"model.dtype={self.dtype!r} is invalid: use float32, bfloat16 or float16."
            )
