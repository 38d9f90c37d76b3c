"""Transcoders in and out of other tools' conventions (docs/transcoders.md).

Out: circuit-tracer's transcoder set, from the runs of a layer sweep:

    python train.py -m site=transcoder sae=jumprelu layer='range(0,26)'
    python export_transcoders.py multirun/<date>/<time> --out tc-set

Each run's export (``<run>/sae``) says its model and layer (cfg.json metadata). The set needs
one transcoder per decoder layer of that model, all of one width. circuit-tracer names the
points a transcoder reads and writes per architecture; where its input hook is the MLP's input
BEFORE the norm's gain (Gemma 2: ``ln2.hook_normalized``) while saelab trains on the MLP's
actual input, the gain is read from the model's weights and folded into each encoder.

In: Gemma Scope's transcoders (params.npz) read that pre-gain input too; ``gemma_scope_transcoder``
divides the gain back out, so the transcoder reads what saelab's transcoder site holds.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from saelab.io.circuit_tracer import save_transcoder_set
from saelab.io.gemma_scope import load_gemma_scope_npz
from saelab.lm.load import load_config, resolve
from saelab.lm.shape import model_shape
from saelab.lm.sites import TRANSFORMER_LENS_HOOKS
from saelab.sae import SAE, load_sae
from saelab.sae.loading import build_from_record

# model_type -> (feature_input_hook, feature_output_hook, the norm whose gain the input hook
# leaves out, or None). circuit-tracer 0.5's hook maps (tl_nnsight_mapping) for these
# architectures; the output is what the residual stream receives, saelab's mlp site.
HOOKS = {
    "gemma2": ("ln2.hook_normalized", "hook_mlp_out", "pre_feedforward_layernorm"),
    "gemma3_text": ("mlp.hook_in", "hook_mlp_out", None),
    "gemma3": ("mlp.hook_in", "hook_mlp_out", None),
    "llama": ("mlp.hook_in", "mlp.hook_out", None),
    "qwen3": ("mlp.hook_in", "mlp.hook_out", None),
}


def find_runs(paths: list[Path]) -> list[Path]:
    """Run folders (holding ``sae/cfg.json``): each path is one, or a sweep folder of them."""
    runs = []
    for path in paths:
        if (path / "sae" / "cfg.json").is_file():
            runs.append(path)
            continue
        found = sorted(p.parent.parent for p in path.glob("*/sae/cfg.json"))
        if not found:
            raise FileNotFoundError(
                f"{path} is neither a run folder (with sae/cfg.json) nor a sweep folder of runs."
            )
        runs += found
    return runs


def norm_gains(model_name: str, norm: str, layers: list[int]) -> dict[int, torch.Tensor]:
    """Each layer's Gemma-style RMSNorm gain ``1 + weight`` of ``layers[i].<norm>``, read from
    the model's safetensors without loading the model."""
    target = resolve(model_name)
    folder = Path(target)
    if not folder.is_dir():
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(target, allow_patterns=["*.json", "*.safetensors"]))
    index = folder / "model.safetensors.index.json"
    where = json.loads(index.read_text())["weight_map"] if index.is_file() else None
    gains = {}
    for layer in layers:
        name = f"model.layers.{layer}.{norm}.weight"
        file = folder / (where[name] if where else "model.safetensors")
        with safe_open(str(file), framework="pt") as f:
            gains[layer] = 1 + f.get_tensor(name).float()
    return gains


def export_transcoder_set(paths: list[Path], out: Path) -> Path:
    runs = find_runs(paths)
    saes, model_names, where = {}, set(), {}
    for run in runs:
        sae = load_sae(run / "sae")
        meta = vars(getattr(sae.cfg, "metadata", None) or object())
        layer, model_name = meta.get("hook_layer"), meta.get("model_name")
        if not sae.transcoder or layer is None or model_name is None:
            raise ValueError(
                f"{run / 'sae'} is not a transcoder trained on an LM (site=transcoder, with its "
                "model and layer in cfg.json's metadata)."
            )
        if layer in saes:
            raise ValueError(
                f"layer {layer} has two transcoders: {where[layer]} and {run}; give one run per "
                "layer."
            )
        saes[int(layer)], where[layer] = sae.export_form(), run
        model_names.add(model_name)
    if len(model_names) != 1:
        raise ValueError(f"the runs were trained on different models: {sorted(model_names)}.")
    (model_name,) = model_names
    model_type = load_config(resolve(model_name)).model_type
    if model_type not in HOOKS:
        raise ValueError(
            f"circuit-tracer 0.5 builds replacement models for {sorted(HOOKS)}; {model_name} is "
            f"{model_type!r}. The transcoders still load in SAELens and saelab."
        )
    n_layers = model_shape({"name_or_path": model_name}).n_layers
    missing = sorted(set(range(n_layers)) - set(saes))
    if missing:
        raise ValueError(
            f"{model_name} has {n_layers} layers and circuit-tracer replaces every MLP; no "
            f"transcoder for layers {missing}. Train them: python train.py -m site=transcoder "
            f"layer={','.join(map(str, missing))} (with this sweep's other keys)."
        )
    input_hook, output_hook, norm = HOOKS[model_type]
    gains = norm_gains(model_name, norm, sorted(saes)) if norm else None
    return save_transcoder_set(
        saes,
        out,
        # What circuit-tracer can load: the hub id, or the folder of a local or embedded model.
        model_name=resolve(model_name),
        input_hook=input_hook,
        output_hook=output_hook,
        input_gains=gains,
    )


def gemma_scope_transcoder(path: str | Path, model_name: str, layer: int) -> SAE:
    """A Gemma Scope transcoder (``params.npz``, e.g. google/gemma-scope-2b-pt-transcoders) as a
    saelab JumpReLU transcoder on the MLP's real input of ``layer``: its encoder reads the
    pre-MLP norm's output without the gain g, so ``W_enc[i, :] /= g_i`` (exact)."""
    model_type = load_config(resolve(model_name)).model_type
    if model_type != "gemma2":
        raise ValueError(
            f"Gemma Scope transcoders are Gemma 2's; {model_name} is {model_type!r}. Give the "
            "model they were trained on (--model google/gemma-2-2b)."
        )
    record = load_gemma_scope_npz(path)
    gain = norm_gains(model_name, "pre_feedforward_layernorm", [layer])[layer]
    if tuple(gain.shape) != (record.tensors["W_enc"].shape[0],):
        raise ValueError(
            f"{path} reads {record.tensors['W_enc'].shape[0]} dimensions but {model_name}'s "
            f"layer {layer} is {gain.shape[0]} wide: give the model it was trained on."
        )
    record.tensors["W_enc"] = record.tensors["W_enc"] / gain[:, None]
    record.config["transcoder"] = True
    record.metadata.update(
        model_name=model_name,
        hook_layer=layer,
        site="transcoder",
        hook_name=TRANSFORMER_LENS_HOOKS["transcoder"].format(layer=layer),
        hook_name_out=TRANSFORMER_LENS_HOOKS["mlp"].format(layer=layer),
    )
    return build_from_record(record)
