"""dictionary_learning's save folder: ``ae.pt`` (a state dict) + ``config.json``
(``{"trainer": {"dict_class": ..., "k": ..., "lm_name": ..., "layer": ...}, "buffer": ...}``).

``ae.pt`` is read with ``torch.load(weights_only=True)``: tensors only, no pickled code. The
dictionary class names the layout; each is translated into the saelab family it computes
(docs/interop.md has the formulas):

    class                    tensors                                               saelab family
    AutoEncoder              encoder.{weight [M, n], bias}, decoder.weight [n, M],  relu (bias is a
                             bias [n] (subtracted before the encoder, added back)   pre-encoder bias;
                                                                                    decoder norms
                                                                                    moved into the
                                                                                    encoder, as its
                                                                                    loader does)
    AutoEncoderNew           encoder.{weight, bias}, decoder.{weight, bias}         relu
    GatedAutoEncoder         encoder.weight, decoder.weight, decoder_bias, r_mag,   gated
                             gate_bias, mag_bias
    JumpReluAutoEncoder      W_enc [n, M], b_enc, W_dec [M, n], b_dec, threshold    jumprelu
    AutoEncoderTopK          encoder.{weight, bias}, decoder.weight, b_dec, k,      topk (k per token;
                             threshold (unused by encode's default)                 ReLU then top-k)
    BatchTopKSAE             as AutoEncoderTopK; encode keeps ReLU(z) > threshold   jumprelu (one
                                                                                    global theta)
    MatryoshkaBatchTopKSAE   W_enc, b_enc, W_dec, b_dec, k, threshold, group_sizes  jumprelu

``nn.Linear`` weights are stored [out, in], so encoder.weight is W_enc transposed and
decoder.weight is W_dec transposed. The trainers scale biases (and thresholds) back to raw
activation units before saving, so the weights act on raw activations.
"""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from pathlib import Path

import torch

from .record import SAEFile, as_float, check_tensors, fold_into_encoder_bias, require_int

WEIGHTS_NAME = "ae.pt"
CONFIG_NAME = "config.json"

_LINEAR_TOPK = ("encoder.weight", "encoder.bias", "decoder.weight", "b_dec", "k", "threshold")
KEYS = {
    "AutoEncoder": ("bias", "encoder.weight", "encoder.bias", "decoder.weight"),
    "AutoEncoderNew": ("encoder.weight", "encoder.bias", "decoder.weight", "decoder.bias"),
    "GatedAutoEncoder": (
        "decoder_bias",
        "encoder.weight",
        "r_mag",
        "gate_bias",
        "mag_bias",
        "decoder.weight",
    ),
    "JumpReluAutoEncoder": ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"),
    "AutoEncoderTopK": _LINEAR_TOPK,
    "BatchTopKSAE": _LINEAR_TOPK,
    "MatryoshkaBatchTopKSAE": ("W_enc", "b_enc", "W_dec", "b_dec", "k", "threshold", "group_sizes"),
}


def read_dictionary_learning_folder(folder: str | os.PathLike) -> SAEFile:
    folder = Path(folder)
    config_path, weights_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    if not config_path.is_file():
        raise FileNotFoundError(
            f"{folder} has {WEIGHTS_NAME} but no {CONFIG_NAME}: dictionary_learning's config.json "
            "(its trainer.dict_class) says which dictionary the weights are."
        )
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{config_path} is not valid JSON: {error}") from None
    trainer = config.get("trainer") if isinstance(config, dict) else None
    if not isinstance(trainer, dict) or "dict_class" not in trainer:
        raise ValueError(
            f"{config_path}: expected dictionary_learning's {{'trainer': {{'dict_class': ...}}}}; "
            "the field trainer.dict_class is missing."
        )
    dict_class = trainer["dict_class"]
    if dict_class not in KEYS:
        raise ValueError(
            f"{config_path}: trainer.dict_class={dict_class!r} is not one saelab reads; it reads "
            f"{', '.join(KEYS)}."
        )
    try:
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, zipfile.BadZipFile, EOFError) as error:
        raise ValueError(
            f"{weights_path} is not a weights-only torch state dict: {error}".splitlines()[0]
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{weights_path} must hold a state dict of tensors.")
    names = KEYS[dict_class]
    missing = [n for n in names if n not in state]
    extra = sorted(set(state) - set(names))
    if missing or extra:
        raise ValueError(
            f"{weights_path}: a {dict_class} holds {list(names)}; missing {missing}, "
            f"unexpected {extra}."
        )
    architecture, config_fields, tensors = _translate(
        dict_class, state, trainer, str(config_path), str(weights_path)
    )
    check_tensors(tensors, str(weights_path))
    metadata = {"dict_class": dict_class}
    for ours, theirs in (("model_name", "lm_name"), ("hook_layer", "layer")):
        if trainer.get(theirs) is not None:
            metadata[ours] = trainer[theirs]
    if trainer.get("submodule_name") is not None:
        metadata["submodule_name"] = trainer["submodule_name"]
    return SAEFile(
        architecture,
        config_fields,
        tensors,
        f"dictionary_learning {dict_class}",
        str(folder),
        metadata,
    )


def _translate(dict_class: str, state: dict, trainer: dict, where: str, weights: str):
    k = int(state["k"]) if "k" in state else None
    s = as_float({n: v for n, v in state.items() if n not in ("k", "group_sizes")}, weights)
    if dict_class == "AutoEncoder":
        W_enc = s["encoder.weight"].T.contiguous()
        t = {
            "W_enc": W_enc,
            # ReLU(W(x - bias) + b) == ReLU(x W + (b - bias W))
            "b_enc": fold_into_encoder_bias(s["encoder.bias"], W_enc, -s["bias"]),
            "W_dec": s["decoder.weight"].T.contiguous(),
            "b_dec": s["bias"],
        }
        return "relu", _shape(t), _unit_decoder(t)
    if dict_class == "AutoEncoderNew":
        t = {
            "W_enc": s["encoder.weight"].T.contiguous(),
            "b_enc": s["encoder.bias"],
            "W_dec": s["decoder.weight"].T.contiguous(),
            "b_dec": s["decoder.bias"],
        }
        return "relu", _shape(t), t
    if dict_class == "GatedAutoEncoder":
        t = {
            "W_enc": s["encoder.weight"].T.contiguous(),
            "W_dec": s["decoder.weight"].T.contiguous(),
            "b_dec": s["decoder_bias"],
            "b_gate": s["gate_bias"],
            "b_mag": s["mag_bias"],
            "r_mag": s["r_mag"],
        }
        unit = bool(((t["W_dec"].norm(dim=1) - 1).abs() < 1e-4).all())
        return "gated", {**_shape(t), "variant": "standard" if unit else "ri_l1"}, t
    if dict_class == "JumpReluAutoEncoder":
        # encode: ReLU(z * (z > theta)) with z = x W_enc + b_enc (b_dec not subtracted).
        return "jumprelu", _shape(s), dict(s)
    if dict_class in ("AutoEncoderTopK", "BatchTopKSAE"):
        W_enc = s["encoder.weight"].T.contiguous()
        t = {
            "W_enc": W_enc,
            "b_enc": s["encoder.bias"],
            "W_dec": s["decoder.weight"].T.contiguous(),
            "b_dec": s["b_dec"],
        }
        if dict_class == "AutoEncoderTopK":
            _check_k(k, trainer, where, t["W_enc"].shape[1])
            return "topk", {**_shape(t), "k": k}, t
        return "jumprelu", _shape(t), _global_threshold(t, s["threshold"], where)
    # MatryoshkaBatchTopKSAE: every group active (as saved), so it is a BatchTopK at inference.
    t = {n: s[n] for n in ("W_enc", "b_enc", "W_dec", "b_dec")}
    return "jumprelu", _shape(t), _global_threshold(t, s["threshold"], where)


def _unit_decoder(t: dict) -> dict:
    """The package's loader (AutoEncoder.from_pretrained, normalize_decoder=True) moves each
    decoder row's norm into the encoder: rows of unit norm, features scaled by the norms, the
    same reconstruction. saelab loads it the same way, so features match the package's."""
    n = t["W_dec"].norm(dim=1)
    return {**t, "W_enc": t["W_enc"] * n, "b_enc": t["b_enc"] * n, "W_dec": t["W_dec"] / n[:, None]}


def _global_threshold(t: dict, threshold: torch.Tensor, where: str) -> dict:
    """ReLU((x - b_dec) W + b) kept where it exceeds one threshold theta > 0: a JumpReLU SAE
    with b_dec folded into b_enc and theta for every latent."""
    if threshold.numel() != 1 or not float(threshold) > 0:
        raise ValueError(
            f"{where}: the inference threshold is {threshold.tolist()!r}; it must be one number "
            "> 0 (dictionary_learning stores -1 until training has estimated it)."
        )
    d_sae = t["W_enc"].shape[1]
    return {
        "W_enc": t["W_enc"],
        "b_enc": fold_into_encoder_bias(t["b_enc"], t["W_enc"], -t["b_dec"]),
        "W_dec": t["W_dec"],
        "b_dec": t["b_dec"],
        "threshold": threshold.reshape(()).expand(d_sae).clone(),
    }


def _check_k(k: int | None, trainer: dict, where: str, d_sae: int) -> None:
    if "k" in trainer:
        require_int(trainer, "k", where)
        if trainer["k"] != k:
            raise ValueError(f"{where}: trainer.k={trainer['k']} but ae.pt stores k={k}.")
    if k is None or not 0 < k <= d_sae:
        raise ValueError(f"{where}: k={k} must be an integer in [1, d_sae={d_sae}].")


def _shape(t: dict) -> dict:
    d_in, d_sae = t["W_enc"].shape
    return {"d_in": int(d_in), "d_sae": int(d_sae)}
