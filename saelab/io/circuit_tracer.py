"""circuit-tracer's transcoder set (docs/transcoders.md): a folder with ``config.yaml`` and one
``layer_{i}.safetensors`` per decoder layer, which ``ReplacementModel.from_pretrained(model,
"/abs/folder")`` loads (circuit-tracer 0.5, ``model_kind: transcoder_set``).

``config.yaml``: ``model_kind``, ``model_name``, ``feature_input_hook`` and
``feature_output_hook`` (hook names inside a block, e.g. ``ln2.hook_normalized``) and ``scan``
(a name for feature dashboards). Each layer file, loaded strictly:

    W_enc [d_sae, d_in]   (transposed: circuit-tracer applies it as F.linear(x, W_enc, b_enc))
    b_enc [d_sae]   W_dec [d_sae, d_in]   b_dec [d_in]
    activation_function.threshold [d_sae]   JumpReLU; absent: ReLU
    W_skip [d_in, d_in]                      only with an affine skip

circuit-tracer's JumpReLU is ``z * (z > threshold)`` with no ReLU, equal to saelab's because
saelab's thresholds are positive. It reads TopK only from configs this format has no field for,
and Gated not at all, so those families are refused here. An input gain (a model whose hook
reads the MLP's input before its norm's gain) is folded into the encoder and the skip exactly:
``W_enc[i, :] *= g_i`` and ``W_skip[:, i] *= g_i``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import yaml
from safetensors.torch import save_file

from saelab.fileio import atomic_folder

from .record import check_tensors

CONFIG_NAME = "config.yaml"


def layer_tensors(sae, input_gain: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """circuit-tracer's tensors of one exported transcoder (acting on raw activations, in its
    export form), with ``input_gain`` [d_in] folded in when given."""
    if not getattr(sae, "transcoder", False):
        raise ValueError(
            "circuit-tracer's transcoder sets hold transcoders; this is an SAE (train one with "
            "site=transcoder)."
        )
    name = type(sae).__name__
    if name not in ("JumpReLUSAE", "ReLUSAE"):
        raise ValueError(
            f"circuit-tracer 0.5 reads JumpReLU and ReLU transcoders from a folder; a {name} "
            "has no such form (TopK and Gated). Train sae=jumprelu, batchtopk, matryoshka or "
            "relu (BatchTopK and Matryoshka export as JumpReLU)."
        )
    W_enc = sae.W_enc.detach().float()
    W_skip = None if sae.W_skip is None else sae.W_skip.detach().float()
    if input_gain is not None:
        gain = input_gain.detach().float()
        W_enc = gain[:, None] * W_enc
        W_skip = None if W_skip is None else W_skip * gain[None, :]
    tensors = {
        "W_enc": W_enc.T,
        "b_enc": sae.b_enc.detach().float(),
        "W_dec": sae.W_dec.detach().float(),
        "b_dec": sae.b_dec.detach().float(),
    }
    if hasattr(sae, "log_threshold"):
        tensors["activation_function.threshold"] = sae.log_threshold.detach().float().exp()
    if W_skip is not None:
        tensors["W_skip"] = W_skip
    return {k: v.cpu().contiguous() for k, v in tensors.items()}


def save_transcoder_set(
    saes: dict[int, object],
    folder: str | os.PathLike,
    *,
    model_name: str,
    input_hook: str,
    output_hook: str,
    input_gains: dict[int, torch.Tensor] | None = None,
) -> Path:
    """Write the set: ``saes`` maps every layer 0..n-1 to its transcoder. The folder appears
    whole or not at all (temporary folder, then rename)."""
    layers = sorted(saes)
    if layers != list(range(len(layers))):
        missing = sorted(set(range(max(layers) + 1)) - set(layers))
        raise ValueError(
            f"a transcoder set needs one transcoder for every layer from 0; missing {missing}."
        )
    tensors = {
        layer: layer_tensors(saes[layer], (input_gains or {}).get(layer)) for layer in layers
    }
    widths = {layer: t["W_enc"].shape for layer, t in tensors.items()}
    if len(set(widths.values())) != 1:
        raise ValueError(f"every layer's transcoder must have the same shape; got {widths}.")
    with atomic_folder(folder) as tmp:
        for layer, t in tensors.items():
            check_tensors({**t, "W_enc": t["W_enc"].T}, f"layer {layer}")
            save_file(t, str(tmp / f"layer_{layer}.safetensors"))
        config = {
            "model_kind": "transcoder_set",
            "model_name": model_name,
            "feature_input_hook": input_hook,
            "feature_output_hook": output_hook,
            "scan": f"saelab/{Path(folder).name}",
        }
        (tmp / CONFIG_NAME).write_text(yaml.safe_dump(config, sort_keys=False))
    return Path(folder)
