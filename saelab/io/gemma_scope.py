"""Gemma Scope's ``params.npz`` (docs/maths.md §7): W_enc [n, M], W_dec [M, n], b_enc [M], b_dec [n] and
threshold [M] (theta itself, not its log). The weights act on RAW activations and the encoder is
``(z > threshold) * relu(z)`` with ``z = x @ W_enc + b_enc`` (no pre-encoder bias), which is
exactly a JumpReLU SAE. Loaded with ``allow_pickle=False``: an npz can carry pickled objects.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch

from .record import SAEFile, as_float, check_tensors

KEYS = ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")


def gemma_scope_arrays(sae) -> dict[str, np.ndarray]:
    """The five Gemma Scope arrays of a JumpReLU SAE (fold its normalisation scale first)."""
    if not hasattr(sae, "log_threshold"):
        raise ValueError(
            f"Gemma Scope params.npz holds JumpReLU SAEs only; got {type(sae).__name__}. "
            "Use saelab.io.save_sae (SAELens layout) for other families."
        )
    tensors = {
        "W_enc": sae.W_enc,
        "W_dec": sae.W_dec,
        "b_enc": sae.b_enc,
        "b_dec": sae.b_dec,
        "threshold": sae.log_threshold.exp(),
    }
    return {k: v.detach().float().cpu().numpy() for k, v in tensors.items()}


def save_gemma_scope_npz(sae, path: str | os.PathLike) -> Path:
    """Write ``params.npz`` atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".npz", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **gemma_scope_arrays(sae))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_gemma_scope_npz(path: str | os.PathLike) -> SAEFile:
    """The record of a Gemma Scope ``params.npz`` (a JumpReLU SAE); ``saelab.sae.load_sae(path)``
    builds the SAE from it."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise ValueError(f"{path} is not a readable Gemma Scope params.npz: {error}") from None
    missing = [k for k in KEYS if k not in arrays]
    if missing:
        raise ValueError(f"{path} lacks {missing}: a Gemma Scope params.npz has {list(KEYS)}.")
    extra = sorted(set(arrays) - set(KEYS))
    if extra:
        raise ValueError(f"{path} holds unexpected arrays {extra}; Gemma Scope has {list(KEYS)}.")
    for key, array in arrays.items():
        if not np.issubdtype(array.dtype, np.floating):
            raise ValueError(f"{path}: {key} has dtype {array.dtype}, expected floats.")
    tensors = as_float(
        {k: torch.from_numpy(np.ascontiguousarray(a)) for k, a in arrays.items()}, str(path)
    )
    check_tensors(tensors, str(path))
    if tensors["threshold"].dim() != 1:
        raise ValueError(f"{path}: threshold must hold one theta per latent.")
    d_in, d_sae = tensors["W_enc"].shape
    config = {"d_in": int(d_in), "d_sae": int(d_sae)}
    return SAEFile("jumprelu", config, tensors, "Gemma Scope params.npz", str(path))
