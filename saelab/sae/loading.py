"""``load_sae``: an SAE from any file saelab reads, detected by its files (docs/interop.md).

    what the path holds                                   format
    cfg.json + sae_weights.safetensors                    saelab export, or written by SAELens
    ae.pt + config.json                                   dictionary_learning
    cfg.json + sae.safetensors                            sparsify (EleutherAI)
    *.npz (or a folder holding params.npz)                Gemma Scope

saelab.io reads the format into a plain record in saelab's names; this module builds the family's
SAE from it. Config keys a family no longer has (training-only knobs of an older export) are
ignored; a missing required one, a wrong type, a tensor of the wrong shape or a non-finite value
is a ValueError naming the file and the field.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .base import SAE

if TYPE_CHECKING:
    from saelab.io.record import SAEFile

ACCEPTED = (
    "a saelab or SAELens folder (cfg.json + sae_weights.safetensors), a dictionary_learning "
    "folder (ae.pt + config.json), a sparsify folder (cfg.json + sae.safetensors) or a Gemma "
    "Scope params.npz"
)


def load_sae(path: str | os.PathLike, device: str | torch.device = "cpu") -> SAE:
    """Load an SAE written by saelab, SAELens, dictionary_learning, sparsify or Gemma Scope.
    What the file says about where the SAE reads (model_name, hook_name, hook_layer, ...) is in
    ``sae.cfg.metadata`` (the place SAELens and SAEBench look)."""
    return build_from_record(read_sae_file(path)).to(device)


def read_sae_file(path: str | os.PathLike) -> SAEFile:
    """The record of the SAE at ``path``, by the format its files show."""
    # Imported here: the formats are needed only to load, and saelab.sae stays light to import.
    from saelab.io import dictionary_learning, gemma_scope, saelens, sparsify

    path = Path(path)
    if path.is_symlink() and not path.exists():
        from saelab.fileio import unreadable_reason

        raise FileNotFoundError(f"{path} is {unreadable_reason(path)}; load_sae reads {ACCEPTED}.")
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; load_sae reads {ACCEPTED}.")
    if path.is_file():
        if path.suffix == ".npz":
            return gemma_scope.load_gemma_scope_npz(path)
        known = {
            saelens.CFG_NAME,
            saelens.WEIGHTS_NAME,
            dictionary_learning.WEIGHTS_NAME,
            dictionary_learning.CONFIG_NAME,
            sparsify.WEIGHTS_NAME,
        }
        if path.name not in known:
            raise ValueError(
                f"{path} is a file saelab does not read as an SAE; it reads {ACCEPTED}."
            )
        path = path.parent
    names = {p.name for p in path.iterdir()}
    if saelens.WEIGHTS_NAME in names or names == {saelens.CFG_NAME}:
        return saelens.read_saelens_folder(path)
    if dictionary_learning.WEIGHTS_NAME in names:
        return dictionary_learning.read_dictionary_learning_folder(path)
    if sparsify.WEIGHTS_NAME in names:
        return sparsify.read_sparsify_folder(path)
    if "params.npz" in names:
        return gemma_scope.load_gemma_scope_npz(path / "params.npz")
    hookpoints = sorted(p.name for p in path.iterdir() if sparsify.is_sparsify_folder(p))
    if hookpoints:
        raise ValueError(
            f"{path} holds sparsify SAEs for several hookpoints ({', '.join(hookpoints)}); "
            "load one of those folders."
        )
    shown = sorted(names)[:12]
    found = ", ".join(shown) + (" ..." if len(names) > len(shown) else "") if names else "nothing"
    raise ValueError(f"{path} holds no SAE saelab can read (found: {found}); it reads {ACCEPTED}.")


def build_from_record(record: SAEFile) -> SAE:
    """The saelab SAE a record describes, with its tensors loaded and metadata attached."""
    from . import SAE_CLASSES  # the registry lives in the package

    where = record.path or record.source
    cls = SAE_CLASSES.get(record.architecture)
    if cls is None:
        raise ValueError(
            f"{where}: architecture={record.architecture!r} is not a saelab family; the families "
            f"are {', '.join(SAE_CLASSES)}."
        )
    _check_sizes(record)
    config = cls.config_class(**_config_fields(cls.config_class, record.config, where))
    sae = cls(config)
    state = dict(record.tensors)
    if "threshold" in state and hasattr(sae, "log_threshold"):
        state["log_threshold"] = state.pop("threshold").log()
    expected = {k: tuple(v.shape) for k, v in sae.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise ValueError(
            f"{where} ({record.source}) does not match a {record.architecture} SAE: missing "
            f"tensors {missing}, unexpected tensors {extra}."
        )
    for name, shape in expected.items():
        if tuple(state[name].shape) != shape:
            raise ValueError(
                f"{where}: {name} has shape {tuple(state[name].shape)} but the config "
                f"(d_in={config.d_in}, d_sae={config.d_sae}) needs {shape}."
            )
    sae.load_state_dict(state, strict=False)
    attach_metadata(sae, **record.metadata)
    return sae


# Beyond any SAE anyone trains (16M latents is among the largest published), and a size torch
# can index: a larger claim in a config is damage or an attack, refused before it is allocated.
MAX_SIZE = 2**31 - 1


def _check_sizes(record: SAEFile) -> None:
    """``d_in`` and ``d_sae`` are sane integers that match the tensors read from the file,
    checked before the SAE is built: a config is a few bytes and can claim any size, and
    building allocates what it claims."""
    where = record.path or record.source
    if record.config_prefix:  # a saelab export: the fields are in its cfg.json
        where = str(Path(where) / "cfg.json")
    W_enc = record.tensors.get("W_enc")
    for axis, name in enumerate(("d_in", "d_sae")):
        value = record.config.get(name)
        if value is None:
            continue  # a missing field is reported by _config_fields, naming it
        field = f"{record.config_prefix}{name}"
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_SIZE:
            raise ValueError(
                f"{where}: {field}={value!r} is invalid: it must be int, in [1, {MAX_SIZE}]."
                f" The config is damaged; fix it or re-export the SAE."
            )
        if W_enc is not None and W_enc.shape[axis] != value:
            raise ValueError(
                f"{where}: {field}={value} does not match the weights: W_enc has shape "
                f"{tuple(W_enc.shape)} (d_in={W_enc.shape[0]}, d_sae={W_enc.shape[1]}). The "
                "config or the weights file is damaged; fix the field or re-export the SAE."
            )


def attach_metadata(sae: SAE, /, **fields) -> SAE:
    """Record where ``sae`` reads (model_name, hook_name, hook_layer, ...) in
    ``sae.cfg.metadata``: ``save_sae`` writes it, SAEBench reads it (docs/interop.md)."""
    current = dict(vars(getattr(sae.cfg, "metadata", None) or types.SimpleNamespace()))
    sae.cfg.metadata = types.SimpleNamespace(**{**current, **fields})
    return sae


def _config_fields(config_class: type, given: dict, where: str) -> dict:
    """The family's fields from ``given``: unknown keys ignored (an older export's training
    knobs), a missing required one or a value of the wrong type a ValueError naming it."""
    hints = typing.get_type_hints(config_class)
    fields = {f.name: f for f in dataclasses.fields(config_class) if f.init}
    required = [
        name
        for name, f in fields.items()
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    missing = [name for name in required if name not in given]
    if missing:
        raise ValueError(f"{where}: the SAE config lacks the required field(s) {missing}.")
    out = {}
    for name, value in given.items():
        if name not in fields:
            continue
        allowed = typing.get_args(hints[name]) or (hints[name],)
        if not any(_is_a(value, t) for t in allowed):
            names = " or ".join(getattr(t, "__name__", str(t)) for t in allowed)
            raise ValueError(f"{where}: {name}={value!r} is invalid: it must be {names}.")
        out[name] = value
    try:
        config_class(**out)
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None
    return out


def _is_a(value, t) -> bool:
    if t is type(None):
        return value is None
    if isinstance(value, bool):
        return t is bool
    if t is float:
        return isinstance(value, (int, float))
    return isinstance(t, type) and isinstance(value, t)
