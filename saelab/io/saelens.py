"""The SAELens folder layout: ``cfg.json`` + ``sae_weights.safetensors`` (docs/maths.md §7).

Tensors keep SAELens names (W_enc, b_enc, W_dec, b_dec, threshold, ...). JumpReLU stores the
threshold theta itself, not its log. Writes go to a temporary folder renamed into place, so a
reader never sees a half-written export.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

CFG_NAME = "cfg.json"
WEIGHTS_NAME = "sae_weights.safetensors"


def _export_tensors(sae) -> dict[str, torch.Tensor]:
    skip = set(getattr(sae, "training_state", ()))
    tensors = {
        k: v.detach().cpu().contiguous() for k, v in sae.state_dict().items() if k not in skip
    }
    if "log_threshold" in tensors:
        tensors["threshold"] = tensors.pop("log_threshold").exp()
    return tensors


def save_sae(sae, folder: str | os.PathLike, metadata: dict | None = None) -> Path:
    """Write ``sae`` (already acting on raw activations: fold the normalisation scale first
    with ``sae.fold_activation_scale``) to ``folder`` in the SAELens layout."""
    folder = Path(folder)
    cfg = sae.cfg.to_dict()
    saelens_cfg = {
        "architecture": cfg["architecture"],
        "d_in": cfg["d_in"],
        "d_sae": cfg["d_sae"],
        "dtype": str(sae.dtype).removeprefix("torch."),
        "apply_b_dec_to_input": cfg["architecture"] in ("topk", "batchtopk", "gated"),
        "normalize_activations": "none",  # the scale is folded into the weights
        "metadata": metadata or {},
        "saelab_config": cfg,
    }
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        save_file(_export_tensors(sae), str(tmp / WEIGHTS_NAME))
        (tmp / CFG_NAME).write_text(json.dumps(saelens_cfg, indent=2))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def load_saelens_folder(folder: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor]]:
    """Read (cfg dict, tensors) from a SAELens-layout folder, with clear errors."""
    folder = Path(folder)
    cfg_path, weights_path = folder / CFG_NAME, folder / WEIGHTS_NAME
    for p in (cfg_path, weights_path):
        if not p.is_file():
            raise FileNotFoundError(
                f"{folder} is not an SAE folder: {p.name} is missing (expected {CFG_NAME} and "
                f"{WEIGHTS_NAME}, as written by saelab.io.save_sae or SAELens)."
            )
    return json.loads(cfg_path.read_text()), load_file(str(weights_path))
