"""Activation sites (docs/maths.md §5): where in a decoder an SAE reads, and how to read it.

    site   what                                        hooked module of decoder layer L
    resid  residual stream after block L               output of layers[L] (a tensor or out[0])
    mlp    the MLP branch as added to the residual     Gemma 2: output of post_feedforward_layernorm
                                                       Llama-style: output of mlp
    attn   concatenated head outputs before o_proj     INPUT of self_attn.o_proj (pre-hook)
    transcoder  the MLP's input, then the mlp site     INPUT of mlp (pre-hook), then the mlp
           ([x | y], 2 * d_model wide)                 site's module as above

A transcoder's input is what the MLP reads, with its norm's gain in it: Gemma 2's
pre_feedforward_layernorm output, Llama's post_attention_layernorm output (docs/transcoders.md).

The layout is recognised from the modules present, not from a list of model names: a layer
with a ``post_feedforward_layernorm`` adds the NORMED MLP output to the residual (Gemma 2,
Gemma 3, OLMo 2), so that norm's output is the MLP site; otherwise the ``mlp`` output is.

Hooks only read: a forward hook that RETURNS a value replaces the module's output, so ours
return None. They are removed in a ``finally`` even when the forward raises. The forward stops
right after the deepest hooked layer (a private exception raised by a hook on that layer):
layers above it, the final norm and the LM head would be wasted work.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

SITES = ("resid", "mlp", "attn", "transcoder")
# The same sites in TransformerLens's hook names, which SAELens and SAEBench read from an SAE's
# cfg.json (``hook_name``): the block output, the MLP output as added to the residual (after
# Gemma 2's post-MLP norm there too) and the per-head attention outputs before W_O.
TRANSFORMER_LENS_HOOKS = {
    "resid": "blocks.{layer}.hook_resid_post",
    "mlp": "blocks.{layer}.hook_mlp_out",
    "attn": "blocks.{layer}.attn.hook_z",
    # What a transcoder reads: the MLP's input, norm gain included (circuit-tracer's name, also
    # in SAELens's metadata for such transcoders); it writes the mlp site's hook_mlp_out.
    "transcoder": "blocks.{layer}.mlp.hook_in",
}
# The same points as Hugging Face module paths (SAELens's hf_hook_name / hf_hook_name_out).
HF_MODULES = {
    "gemma2": ("pre_feedforward_layernorm", "post_feedforward_layernorm"),
    "llama": ("post_attention_layernorm", "mlp"),
}


class SitePoint(NamedTuple):
    """One (site, layer) pair to capture."""

    site: str
    layer: int


@dataclass
class SiteConfig:
    """The ``site`` config group's schema: the site's name. Its width is the model's
    (``shape.py``), resolved into ``data.d_in``."""

    name: str = "resid"

    def __post_init__(self) -> None:
        check_site(self.name)


def check_site(site: str, layer: int | None = None, n_layers: int | None = None) -> None:
    """Fail before any work on an unknown site or an out-of-range layer, naming what is valid."""
    if site not in SITES:
        raise ValueError(
            f"site={site!r} is unknown: the sites are {', '.join(SITES)} (docs/maths.md §5)."
        )
    if layer is not None and n_layers is not None and not 0 <= layer < n_layers:
        raise ValueError(
            f"layer={layer!r} is out of range: the model has {n_layers} layers (0..{n_layers - 1})."
        )


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The list of decoder blocks: ``model.model.layers`` (a *ForCausalLM) or ``model.layers``."""
    for path in ("model.layers", "layers"):
        try:
            layers = model.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(layers, nn.ModuleList) and len(layers) > 0:
            return layers
    raise ValueError(
        f"cannot find the decoder layers of {type(model).__name__}: looked for `model.layers` and "
        "`layers` (an nn.ModuleList, as in Hugging Face Gemma 2 and Llama-style models). Site "
        "hooks are mapped for those layouts only (saelab/lm/sites.py)."
    )


def layout(model: nn.Module) -> str:
    """``"gemma2"`` (post-MLP norm) or ``"llama"``; a clear error for anything else."""
    layer = decoder_layers(model)[0]
    attn = getattr(layer, "self_attn", None)
    has_o_proj = isinstance(getattr(attn, "o_proj", None), nn.Module)
    if has_o_proj and isinstance(getattr(layer, "post_feedforward_layernorm", None), nn.Module):
        return "gemma2"
    if has_o_proj and isinstance(getattr(layer, "mlp", None), nn.Module):
        return "llama"
    children = [name for name, _ in layer.named_children()]
    model_type = getattr(getattr(model, "config", None), "model_type", "?")
    raise ValueError(
        f"unknown decoder-layer layout (model_type={model_type!r}, {type(layer).__name__} has "
        f"children {children}). Looked for `self_attn.o_proj` plus `post_feedforward_layernorm` "
        "(Gemma 2 layout) or `mlp` (Llama-style layout). Add a mapping in saelab/lm/sites.py."
    )


def _module_path(model: nn.Module, point: SitePoint) -> tuple[str, str]:
    """(submodule path relative to the decoder layer, "output" or "input")."""
    if point.site == "resid":
        return "", "output"
    if point.site == "attn":
        return "self_attn.o_proj", "input"
    if point.site == "transcoder":
        return "mlp", "pair"
    return ("post_feedforward_layernorm" if layout(model) == "gemma2" else "mlp"), "output"


def mlp_output_path(model: nn.Module) -> str:
    """The module whose output is the MLP's contribution to the residual (the mlp site)."""
    return _module_path(model, SitePoint("mlp", 0))[0]


def describe(model: nn.Module, point: SitePoint) -> str:
    """Human-readable hook location, recorded in cache manifests, e.g.
    ``layers[12].post_feedforward_layernorm (output)``."""
    path, kind = _module_path(model, point)
    if kind == "pair":
        return f"layers[{point.layer}].mlp (input) | layers[{point.layer}].{mlp_output_path(model)} (output)"
    return f"layers[{point.layer}]{'.' + path if path else ''} ({kind})"


def site_width(model: nn.Module, site: str) -> int:
    """The activation width of ``site``: hidden size, or o_proj's input size for attn."""
    check_site(site)
    layer = decoder_layers(model)[0]
    layout(model)  # fail on unknown layouts here too
    if site == "attn":
        return int(layer.self_attn.o_proj.in_features)
    if site == "transcoder":
        return 2 * int(model.config.hidden_size)
    return int(model.config.hidden_size)


def check_points(model: nn.Module, points: Iterable[SitePoint]) -> list[SitePoint]:
    """Validate every point against the LOADED model (its real depth and layout)."""
    points = list(points)
    n_layers = len(decoder_layers(model))
    for point in points:
        check_site(point.site, point.layer, n_layers)
        layout(model)
    return points


class _StopForward(Exception):
    """Raised by the hook on the deepest layer needed; caught by ``forward_until``."""


@contextmanager
def capture(
    model: nn.Module, points: Iterable[SitePoint], stop_at: int | None = None
) -> Iterator[dict[SitePoint, Tensor]]:
    """Hooks that record each point's activations [batch, seq, d] into the yielded dict.

    If ``stop_at`` is given, a hook on ``layers[stop_at]`` ends the forward (after the capture
    hooks, which are registered first and so run first). All hooks are removed on exit.
    """
    points = check_points(model, points)
    layers = decoder_layers(model)
    store: dict[SitePoint, Tensor] = {}
    handles = []

    def reader(point: SitePoint, kind: str):
        def on_output(module, args, output):
            store[point] = (output[0] if isinstance(output, (tuple, list)) else output).detach()
            # Returning nothing: a returned value would REPLACE the module's output.

        def on_input(module, args):
            store[point] = args[0].detach()

        def on_pair_output(module, args, output):
            # The MLP's input was stored by its pre-hook, which runs first in both layouts.
            y = output[0] if isinstance(output, (tuple, list)) else output
            store[point] = torch.cat([store[point], y.detach()], dim=-1)

        return {"output": on_output, "input": on_input, "pair": on_pair_output}[kind]

    def stop(module, args, output):
        raise _StopForward

    try:
        for point in points:
            path, kind = _module_path(model, point)
            module = layers[point.layer].get_submodule(path) if path else layers[point.layer]
            if kind == "pair":
                handles.append(module.register_forward_pre_hook(reader(point, "input")))
                module = layers[point.layer].get_submodule(mlp_output_path(model))
            hook = reader(point, kind)
            if kind in ("output", "pair"):
                handles.append(module.register_forward_hook(hook))
            else:
                handles.append(module.register_forward_pre_hook(hook))
        if stop_at is not None:
            check_site("resid", stop_at, len(layers))
            handles.append(layers[stop_at].register_forward_hook(stop))
        yield store
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def forward_until(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor | None,
    points: Iterable[SitePoint],
    stop_at: int | None = None,
) -> dict[SitePoint, Tensor]:
    """Run the LM just far enough to capture ``points``; returns {point: [batch, seq, d]}.

    ``stop_at`` defaults to the deepest captured layer; with no points it must be given (a bare
    forward, used by the benchmark as the baseline).
    """
    points = list(points)
    if stop_at is None:
        if not points:
            raise ValueError("forward_until needs points to capture or a stop_at layer")
        stop_at = max(p.layer for p in points)
    with capture(model, points, stop_at=stop_at) as store:
        try:
            # use_cache=False: no KV cache to allocate, we never generate.
            model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        except _StopForward:
            pass
        else:  # pragma: no cover - only if a model skips its own layers
            raise RuntimeError(
                f"the forward never reached layers[{stop_at}]; cannot trust captures"
            )
    missing = [p for p in points if p not in store]
    if missing:
        raise RuntimeError(f"hooks for {missing} never fired during the forward pass")
    return store
