"""The SAELens folder layout: ``cfg.json`` + ``sae_weights.safetensors`` (docs/interop.md).

What SAELens's ``SAE.load_from_disk(folder)`` needs, as its source reads it:

- ``cfg.json``: ``architecture`` picks the class from SAELens's inference registry (``standard``,
  ``gated``, ``jumprelu``, ``topk``, ...; ``batchtopk`` is training-only there, so BatchTopK is
  written as the JumpReLU SAE it is at inference); ``d_in``, ``d_sae`` and ``dtype`` are required;
  ``apply_b_dec_to_input`` defaults to TRUE (encode then reads ``x - b_dec``), so it is always
  written; ``normalize_activations`` ``"none"``; ``topk`` reads a top-level ``k`` (default 100).
- ``metadata.sae_lens_version`` >= 6 selects SAELens's current cfg parser, which keeps
  ``metadata`` (model_name, hook_name, ...) as written; without it the pre-6 parser rebuilds
  metadata from top-level keys. saelab writes the current layout, plus top-level copies of
  ``model_name``/``hook_name`` for older readers.
- The weights load strictly: exactly the class's tensors, no more (training state stays out).

Per-family facts (SAELens's name, ``apply_b_dec_to_input``, ``k``) come from the SAE itself
(``saelens_cfg()``), and what is written is ``export_form()``; nothing here imports saelab.sae.
``read_saelens_folder`` reads both saelab's exports (``saelab_config`` present) and folders
written by SAELens, translating the latter into saelab's form (``record.py``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from saelab.fileio import atomic_folder, write_json

from .record import (
    SAEFile,
    as_float,
    check_tensors,
    fold_into_encoder_bias,
    require_int,
    require_keys,
)

CFG_NAME = "cfg.json"
WEIGHTS_NAME = "sae_weights.safetensors"
SAELENS_LAYOUT_VERSION = "6.0.0"
"""Written as ``metadata.sae_lens_version``: the cfg layout version SAELens parses it as."""

# SAELens's inference architectures saelab reads, their tensors, and the saelab family each is.
SAELENS_TENSORS = {
    "standard": ("W_enc", "b_enc", "W_dec", "b_dec"),
    "gated": ("W_enc", "W_dec", "b_dec", "b_gate", "b_mag", "r_mag"),
    "jumprelu": ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"),
    "topk": ("W_enc", "b_enc", "W_dec", "b_dec"),
}
SAELAB_FAMILY = {"standard": "relu", "gated": "gated", "jumprelu": "jumprelu", "topk": "topk"}
# SAELens's transcoders (read x, write another activation of d_out = d_in here): the SAE they
# extend, and whether they add x @ W_skip.T.
TRANSCODERS = {
    "transcoder": ("standard", False),
    "skip_transcoder": ("standard", True),
    "jumprelu_transcoder": ("jumprelu", False),
    "jumprelu_skip_transcoder": ("jumprelu", True),
}
# Where SAELens keeps what an SAE reads: top-level before 6.0, under ``metadata`` since.
METADATA_KEYS = (
    "model_name",
    "hook_name",
    "hook_layer",
    "hook_head_index",
    "context_size",
    "prepend_bos",
    "dataset_path",
    "model_class_name",
    "neuronpedia_id",
)
# normalize_activations values whose encode is the plain formula when loaded from disk
# ("expected_average_only_in" is folded only by SAELens's hub loader; from disk it is a no-op).
PLAIN_NORMALIZATION = ("none", "expected_average_only_in")


# --- writing ----------------------------------------------------------------------------------
def _export_tensors(sae) -> dict[str, torch.Tensor]:
    # An inference SAE's state is exactly what an export holds (training state lives elsewhere).
    tensors = {k: v.detach().cpu().contiguous() for k, v in sae.state_dict().items()}
    if "log_threshold" in tensors:
        tensors["threshold"] = tensors.pop("log_threshold").exp()
    return tensors


def _plain(metadata) -> dict:
    if metadata is None:
        return {}
    return dict(metadata) if isinstance(metadata, dict) else dict(vars(metadata))


def saelens_cfg_dict(sae, metadata: dict | None = None) -> dict:
    """cfg.json for ``sae`` (duck-typed: ``export_form()``, ``saelens_cfg()``, ``cfg.to_dict()``,
    ``dtype``). ``metadata`` adds to what ``sae.cfg.metadata`` already says (a loaded SAE's)."""
    form = sae.export_form() if hasattr(sae, "export_form") else sae
    meta = {**_plain(getattr(sae.cfg, "metadata", None)), **(metadata or {})}
    meta.pop("sae_lens_version", None)
    config = form.cfg.to_dict()
    hook = str(meta.get("hook_name") or "")
    return {
        **form.saelens_cfg(),
        "d_in": config["d_in"],
        "d_sae": config["d_sae"],
        "dtype": str(form.dtype).removeprefix("torch."),
        "device": "cpu",
        "normalize_activations": "none",  # the normalisation scale is folded into the weights
        # SAELens's convention for attention SAEs read at hook_z: [.., heads, d_head] inputs.
        "reshape_activations": "hook_z" if hook.endswith("hook_z") else "none",
        **{k: meta[k] for k in ("model_name", "hook_name") if k in meta},
        "metadata": {"sae_lens_version": SAELENS_LAYOUT_VERSION, **meta},
        "saelab_config": config,
    }


def save_sae(sae, folder: str | os.PathLike, metadata: dict | None = None) -> Path:
    """Write ``sae`` (already acting on raw activations: fold the normalisation scale first
    with ``sae.fold_activation_scale``) to ``folder`` in the SAELens layout. ``metadata``:
    ``model_name``, ``hook_name``, ``hook_layer`` and anything else worth keeping (metrics).
    Refuses non-finite weights. The folder appears whole or not at all (temporary folder, then
    rename)."""
    folder = Path(folder)
    cfg = saelens_cfg_dict(sae, metadata)
    form = sae.export_form() if hasattr(sae, "export_form") else sae
    tensors = _export_tensors(form)
    check_tensors({k: v.float() for k, v in tensors.items()}, f"save_sae({folder})")
    with atomic_folder(folder) as tmp:
        save_file(tensors, str(tmp / WEIGHTS_NAME))
        write_json(tmp / CFG_NAME, cfg)  # strict: a NaN in the metadata is refused, by key
    return folder


# --- reading ----------------------------------------------------------------------------------
def load_saelens_folder(folder: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor]]:
    """(cfg dict, tensors) of a SAELens-layout folder as stored, with clear errors."""
    folder = Path(folder)
    cfg_path, weights_path = folder / CFG_NAME, folder / WEIGHTS_NAME
    for p in (cfg_path, weights_path):
        if not p.is_file():
            raise FileNotFoundError(
                f"{folder} is not an SAE folder: {p.name} is missing (expected {CFG_NAME} and "
                f"{WEIGHTS_NAME}, as written by saelab.io.save_sae or SAELens)."
            )
    try:
        cfg = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{cfg_path} is not valid JSON: {error}") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{cfg_path} must hold a JSON object, not {type(cfg).__name__}.")
    try:
        tensors = load_file(str(weights_path))
    except (SafetensorError, OSError) as error:
        raise ValueError(f"{weights_path} is not a readable safetensors file: {error}") from None
    return cfg, tensors


def read_saelens_folder(folder: str | os.PathLike) -> SAEFile:
    """The record of a SAELens-layout folder: a saelab export as saved, or an SAE written by
    SAELens translated into the saelab family it is."""
    folder = Path(folder)
    cfg, tensors = load_saelens_folder(folder)
    where = str(folder / CFG_NAME)
    if "saelab_config" in cfg:
        return _saelab_export(cfg, tensors, folder)
    return _from_saelens(cfg, tensors, folder, where)


def _saelab_export(cfg: dict, tensors: dict, folder: Path) -> SAEFile:
    config = cfg["saelab_config"]
    where = str(folder / CFG_NAME)
    if not isinstance(config, dict):
        raise ValueError(f"{where}: saelab_config must be a JSON object.")
    require_keys(config, ("architecture",), where, "saelab_config")
    config = dict(config)
    architecture = config.pop("architecture")
    tensors = as_float(tensors, str(folder / WEIGHTS_NAME))
    check_tensors(tensors, str(folder / WEIGHTS_NAME))
    metadata = _file_metadata(cfg, where)
    metadata.pop("sae_lens_version", None)
    return SAEFile(
        architecture, config, tensors, "saelab export", str(folder), metadata, "saelab_config."
    )


def _file_metadata(cfg: dict, where: str) -> dict:
    """cfg.json's ``metadata``: a JSON object (or absent), kept as written."""
    metadata = cfg.get("metadata")
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise ValueError(
            f"{where}: metadata must be a JSON object (model_name, hook_name, ...), not "
            f"{type(metadata).__name__}; fix or remove the field."
        )
    return dict(metadata)


def _from_saelens(cfg: dict, tensors: dict, folder: Path, where: str) -> SAEFile:
    arch = cfg.get("architecture", "standard")  # SAELens's own default for pre-6.0 files
    if arch in ("batchtopk", "matryoshka_batchtopk"):
        raise ValueError(
            f"{where}: architecture {arch!r} is a SAELens TRAINING config; SAELens writes these "
            "SAEs for inference as 'jumprelu' (TrainingSAE.save_inference_model). Save it that "
            "way and load that folder."
        )
    transcoder, skip = arch in TRANSCODERS, False
    if transcoder:
        arch, skip = TRANSCODERS[arch]
        d_out = cfg.get("d_out")
        if d_out != cfg.get("d_in"):
            raise ValueError(
                f"{where}: a transcoder with d_out={d_out!r} other than d_in={cfg.get('d_in')!r}; "
                "saelab's transcoders write an activation as wide as they read (an MLP's)."
            )
    if arch not in SAELENS_TENSORS:
        raise ValueError(
            f"{where}: architecture={arch!r} is not one saelab reads; it reads SAELens's "
            f"{', '.join([*SAELENS_TENSORS, *TRANSCODERS])}."
        )
    require_keys(cfg, ("d_in", "d_sae"), where, "cfg.json")
    d_in, d_sae = require_int(cfg, "d_in", where), require_int(cfg, "d_sae", where)
    norm = cfg.get("normalize_activations") or "none"
    if norm not in PLAIN_NORMALIZATION:
        raise ValueError(
            f"{where}: normalize_activations={norm!r} changes the input at run time, which "
            f"saelab's SAEs do not do; it reads {PLAIN_NORMALIZATION}."
        )
    apply_b_dec = cfg.get("apply_b_dec_to_input", True)  # SAELens's default
    if not isinstance(apply_b_dec, bool):
        raise ValueError(f"{where}: apply_b_dec_to_input={apply_b_dec!r} must be true or false.")
    tensors = dict(tensors)
    if arch == "jumprelu" and "log_threshold" in tensors and "threshold" not in tensors:
        tensors["threshold"] = tensors.pop("log_threshold").exp()
    scaling = tensors.pop("scaling_factor", None)
    if scaling is not None and not torch.allclose(scaling, torch.ones_like(scaling)):
        raise ValueError(
            f"{folder / WEIGHTS_NAME}: a finetuning scaling_factor other than 1 is not supported."
        )
    names = (*SAELENS_TENSORS[arch], "W_skip") if skip else SAELENS_TENSORS[arch]
    missing = [n for n in names if n not in tensors]
    extra = sorted(set(tensors) - set(names))
    if missing or extra:
        raise ValueError(
            f"{folder / WEIGHTS_NAME}: a SAELens {arch!r} SAE holds {list(names)}; missing "
            f"{missing}, unexpected {extra}."
        )
    t = as_float(tensors, str(folder / WEIGHTS_NAME))
    if tuple(t["W_enc"].shape) != (d_in, d_sae):
        raise ValueError(
            f"{folder / WEIGHTS_NAME}: W_enc has shape {tuple(t['W_enc'].shape)} but cfg.json "
            f"says d_in={d_in}, d_sae={d_sae}."
        )
    check_tensors(t, str(folder / WEIGHTS_NAME))
    config = {"d_in": d_in, "d_sae": d_sae}
    if transcoder:  # SAELens never subtracts b_dec from a transcoder's input
        config.update(transcoder=True, skip_connection=skip)
        apply_b_dec = False
    if arch == "topk":
        config["k"] = _topk_k(cfg, where, d_sae)
        if cfg.get("rescale_acts_by_decoder_norm", False):
            # TopK on z * ||W_dec_i||, decoding f / ||W_dec_i||: the same SAE with the norms
            # moved into the encoder and out of the decoder (rows then unit norm).
            n = t["W_dec"].norm(dim=1)
            t["W_enc"], t["b_enc"], t["W_dec"] = (
                t["W_enc"] * n,
                t["b_enc"] * n,
                t["W_dec"] / n[:, None],
            )
        if not apply_b_dec:  # saelab's TopK reads x - b_dec
            t["b_enc"] = fold_into_encoder_bias(t["b_enc"], t["W_enc"], t["b_dec"])
    elif arch == "gated":
        if not apply_b_dec:  # saelab's Gated reads x - b_dec
            shift = (t["b_dec"].double() @ t["W_enc"].double()).float()
            t["b_gate"] = t["b_gate"] + shift
            t["b_mag"] = t["b_mag"] + shift * t["r_mag"].exp()
        config["variant"] = "standard" if _unit_rows(t["W_dec"]) else "ri_l1"
    elif apply_b_dec:  # standard / jumprelu: saelab's encoder reads x itself
        t["b_enc"] = fold_into_encoder_bias(t["b_enc"], t["W_enc"], -t["b_dec"])
    metadata = {k: cfg[k] for k in METADATA_KEYS if k in cfg}
    metadata.update(_file_metadata(cfg, where))
    metadata.pop("sae_lens_version", None)
    metadata["reshape_activations"] = cfg.get("reshape_activations", "none")
    return SAEFile(SAELAB_FAMILY[arch], config, t, f"SAELens {arch!r}", str(folder), metadata)


def _topk_k(cfg: dict, where: str, d_sae: int) -> int:
    kwargs = cfg.get("activation_fn_kwargs") or {}
    if "k" not in cfg and isinstance(kwargs, dict) and "k" in kwargs:
        cfg = {**cfg, "k": kwargs["k"]}  # the pre-6.0 place
    if "k" not in cfg:
        raise ValueError(
            f"{where}: a topk SAE needs k (SAELens would silently use its default of 100); "
            "add the k the SAE was trained with."
        )
    k = require_int(cfg, "k", where)
    if k > d_sae:
        raise ValueError(f"{where}: k={k} is larger than d_sae={d_sae}.")
    return k


def _unit_rows(W_dec: torch.Tensor, tol: float = 1e-4) -> bool:
    return bool(((W_dec.norm(dim=1) - 1).abs() < tol).all())
