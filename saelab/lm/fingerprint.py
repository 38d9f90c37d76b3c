"""A stable id of a model's WEIGHTS, for activation-cache keys, computed without loading it.

A model name is not enough: re-pretraining the embedded model, fine-tuning a local folder or a
new hub commit keeps the name and changes every activation. So:

- embedded / local folder: a blake2b hash of the weight files' bytes (and config.json);
- hub id: the commit sha of the snapshot transformers loads (from the local hub cache, else
  asked from the hub); hashing many GB of weights on every run would cost minutes, while a
  commit sha already pins the bytes exactly.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

from saelab.fileio import file_digest
from saelab.lm.load import hub_reachable, resolve

_WEIGHT_SUFFIXES = (".safetensors",)


def folder_fingerprint(folder: Path) -> str:
    """Hash of config.json and every *.safetensors file (names and contents) in ``folder``."""
    files = sorted(
        p for p in folder.iterdir() if p.suffix in _WEIGHT_SUFFIXES or p.name == "config.json"
    )
    if not any(p.suffix in _WEIGHT_SUFFIXES for p in files):
        raise FileNotFoundError(
            f"no *.safetensors weights in {folder}: saelab loads safetensors only (never pickled "
            ".bin files); re-save the model with save_pretrained(safe_serialization=True)"
        )
    h = hashlib.blake2b(digest_size=16)
    for path in files:
        h.update(path.name.encode() + b"\0")
        file_digest(path, h)
    return h.hexdigest()


def _hub_commit(repo_id: str, revision: str | None) -> str | None:
    import huggingface_hub

    cached = huggingface_hub.try_to_load_from_cache(repo_id, "config.json", revision=revision)
    if isinstance(cached, str):  # .../snapshots/<commit sha>/config.json
        return Path(cached).parent.name
    if not hub_reachable():  # offline, or no network: no retries, no wait
        return None
    try:
        return huggingface_hub.HfApi().model_info(repo_id, revision=revision).sha
    except Exception:
        return None


def weights_fingerprint(name_or_path: str, revision: str | None = None) -> str:
    """``"blake2b:<hex>"`` for local weights, ``"hub:<repo>@<commit>"`` for hub models."""
    target = resolve(name_or_path)
    folder = Path(target)
    if folder.is_dir():
        return "blake2b:" + folder_fingerprint(folder)
    commit = _hub_commit(target, revision)
    if commit is None:
        warnings.warn(
            f"cannot resolve the commit of {target}@{revision or 'main'} (not in the local hub "
            "cache and the hub is unreachable): the activation-cache key uses the revision name, "
            "so pin model.revision to a commit sha to be safe",
            stacklevel=2,
        )
        return f"hub:{target}@{revision or 'main'}"
    return f"hub:{target}@{commit}"
