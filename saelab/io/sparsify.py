"""sparsify's (EleutherAI) SparseCoder folder: ``sae.safetensors`` + ``cfg.json``.

cfg.json holds the SparseCoderConfig fields (``activation``, ``k``, ``num_latents``,
``expansion_factor``, ``normalize_decoder``, ``multi_topk``, ``skip_connection``,
``transcode``) plus ``d_in``. The tensors: ``encoder.weight [M, d_in]`` and ``encoder.bias [M]``
(an ``nn.Linear``), ``W_dec [M, d_in]``, ``b_dec [d_in]``, and ``W_skip [d_in, d_in]`` with a
skip connection. Its encoder subtracts b_dec first, takes ReLU, then keeps the k largest per
token; the decoder sums the kept latents' W_dec rows and adds b_dec. That is saelab's TopK SAE
(the ReLU/top-k order gives the same output). With ``transcode`` the coder reads the hooked
module's input and writes its output, and its encoder does not subtract b_dec: saelab's TopK
transcoder (with ``W_skip`` when ``skip_connection``). A run over several hookpoints saves one
such folder per hookpoint, named after it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file

from .record import SAEFile, as_float, check_tensors, require_int, require_keys

WEIGHTS_NAME = "sae.safetensors"
CFG_NAME = "cfg.json"
TENSORS = ("encoder.weight", "encoder.bias", "W_dec", "b_dec")


def read_sparsify_folder(folder: str | os.PathLike) -> SAEFile:
    folder = Path(folder)
    cfg_path, weights_path = folder / CFG_NAME, folder / WEIGHTS_NAME
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{folder} has {WEIGHTS_NAME} but no {CFG_NAME} (sparsify's).")
    where = str(cfg_path)
    try:
        cfg = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{cfg_path} is not valid JSON: {error}") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{cfg_path} must hold a JSON object.")
    require_keys(cfg, ("d_in", "k"), where, "sparsify's cfg.json")
    d_in, k = require_int(cfg, "d_in", where), require_int(cfg, "k", where)
    activation = cfg.get("activation", "topk")
    if activation != "topk":
        raise ValueError(
            f"{where}: activation={activation!r}; saelab reads sparsify's 'topk' coders only."
        )
    transcode, skip = bool(cfg.get("transcode", False)), bool(cfg.get("skip_connection", False))
    if skip and not transcode:
        raise ValueError(
            f"{where}: skip_connection=true on an autoencoder (transcode=false) is not supported: "
            "saelab's skip belongs to transcoders."
        )
    try:
        tensors = load_file(str(weights_path))
    except (SafetensorError, OSError) as error:
        raise ValueError(f"{weights_path} is not a readable safetensors file: {error}") from None
    names = (*TENSORS, "W_skip") if skip else TENSORS
    missing = [n for n in names if n not in tensors]
    extra = sorted(set(tensors) - set(names))
    if missing or extra:
        raise ValueError(
            f"{weights_path}: a sparsify SparseCoder holds {list(names)}; missing {missing}, "
            f"unexpected {extra}."
        )
    s = as_float(tensors, str(weights_path))
    t = {
        "W_enc": s["encoder.weight"].T.contiguous(),
        "b_enc": s["encoder.bias"],
        "W_dec": s["W_dec"],
        "b_dec": s["b_dec"],
    }
    if skip:
        t["W_skip"] = s["W_skip"]  # out += x @ W_skip.T, saelab's orientation
        if tuple(t["W_skip"].shape) != (d_in, d_in):
            raise ValueError(
                f"{weights_path}: W_skip has shape {tuple(t['W_skip'].shape)}, expected "
                f"({d_in}, {d_in})."
            )
    check_tensors(t, str(weights_path))
    if t["W_enc"].shape[0] != d_in:
        raise ValueError(
            f"{weights_path}: encoder.weight is {tuple(s['encoder.weight'].shape)} but cfg.json "
            f"says d_in={d_in}."
        )
    d_sae = int(t["W_enc"].shape[1])
    if k > d_sae:
        raise ValueError(f"{where}: k={k} is larger than the {d_sae} latents.")
    config = {"d_in": d_in, "d_sae": d_sae, "k": k}
    if transcode:  # reads the hooked module's input, writes its output; no pre-encoder bias
        config.update(transcoder=True, skip_connection=skip)
    metadata = {"hookpoint": folder.name}
    return SAEFile("topk", config, t, "sparsify SparseCoder", str(folder), metadata)


def is_sparsify_folder(folder: Path) -> bool:
    return (folder / WEIGHTS_NAME).is_file() and (folder / CFG_NAME).is_file()
