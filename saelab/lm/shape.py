"""A model's shape read from the model itself: depth, site widths and layout, without weights.

The config (config.json of the embedded model, a local folder, or a hub id in the local hub
cache) is read with transformers' AutoConfig, and the model is instantiated on the ``meta``
device (no memory, no weights) so that depth, widths and layout come from the very modules the
site hooks will read (``sites.py``), whatever the config's field names. Memoised per process:
composing a config asks for it once per site.

A shape can also be stated (``model.n_layers``, ``model.d_model``, ``model.d_attn``) for a hub
id that is neither cached here nor reachable; when the model CAN be read, a stated value must
agree with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

import torch

from saelab.lm.load import ModelLoadError, explain, load_config, resolve
from saelab.lm.sites import check_site, decoder_layers, layout, site_width

STATED = ("n_layers", "d_model", "d_attn")


@dataclass(frozen=True)
class ModelShape:
    name: str
    n_layers: int
    d_model: int
    """Width of the residual stream and of the ``mlp`` site."""
    d_attn: int
    """Width of the ``attn`` site: heads x head_dim, the input of o_proj."""
    layout: str | None = None
    """``gemma2`` or ``llama`` (None when the shape was stated, not read)."""

    def width(self, site: str) -> int:
        check_site(site)
        if site == "transcoder":  # rows [MLP input | MLP output]
            return 2 * self.d_model
        return self.d_attn if site == "attn" else self.d_model

    def check_layer(self, layer: int) -> None:
        if not 0 <= layer < self.n_layers:
            raise ValueError(
                f"layer={layer!r} is out of range: {self.name} has {self.n_layers} layers "
                f"(0..{self.n_layers - 1})."
            )


def _get(model: Any, key: str, default=None):
    return model.get(key, default) if isinstance(model, dict) else getattr(model, key, default)


def model_shape(model: Any) -> ModelShape:
    """The shape of ``model`` (a ModelConfig, or a dict/DictConfig with its fields)."""
    name = str(_get(model, "name_or_path", "tiny-gemma-2"))
    stated = tuple(_get(model, key) for key in STATED)
    return _shape(
        name, _get(model, "revision"), bool(_get(model, "trust_remote_code", False)), stated
    )


@cache
def _shape(name: str, revision: str | None, trust_remote_code: bool, stated: tuple) -> ModelShape:
    given = dict(zip(STATED, stated))
    target = resolve(name)  # a bad local path fails here, naming the path
    try:
        config = load_config(target, revision, trust_remote_code)
    except OSError as error:
        if all(v is not None for v in stated):
            return ModelShape(name, **given)
        missing = " ".join(f"model.{k}=<...>" for k, v in given.items() if v is None)
        raise ModelLoadError(
            f"{explain(name, 'config', error)}\nThe config is read for the model's shape "
            "(layers and widths). If the model cannot be reached from this machine but you know "
            f"its shape, state it: {missing} (n_layers: decoder layers; d_model: hidden size; "
            "d_attn: attention heads x head_dim)."
        ) from None
    read = _read(name, config, trust_remote_code)
    for key, value in given.items():
        if value is not None and value != getattr(read, key):
            raise ValueError(
                f"model.{key}={value} disagrees with {name}'s own config ({key} "
                f"{getattr(read, key)}): drop model.{key}, the shape is read from the model."
            )
    return read


def _read(name: str, config, trust_remote_code: bool) -> ModelShape:
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    return ModelShape(
        name=name,
        n_layers=len(decoder_layers(model)),
        d_model=site_width(model, "resid"),
        d_attn=site_width(model, "attn"),
        layout=layout(model),
    )
