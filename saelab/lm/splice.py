"""Splicing a reconstruction into the model's forward, for the paper's headline metric:
delta LM loss = CE(next token | x_hat spliced in at the site) - CE(clean) (docs/maths.md §6).
At ``site=transcoder`` the replacement reads the MLP's input and replaces the MLP's output: the
transcoder stands in for the MLP (docs/transcoders.md).

The replacement happens only at unmasked positions (BOS, EOS and padding keep their clean
activations, as they were never trained on). The hook is removed in a ``finally``, so the
model is unchanged afterwards even when the forward raises.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .sites import SitePoint, _module_path, check_points, decoder_layers, mlp_output_path


@contextmanager
def splice(
    model: nn.Module,
    point: SitePoint,
    replace: Callable[[Tensor], Tensor],
    keep_mask: Tensor | None = None,
) -> Iterator[None]:
    """Within the block, the site's activations [batch, seq, d] become ``replace(acts)`` at the
    positions where ``keep_mask`` [batch, seq] is True (everywhere if None)."""
    check_points(model, [point])
    path, kind = _module_path(model, point)
    layer = decoder_layers(model)[point.layer]
    module = layer.get_submodule(path) if path else layer

    def new_acts(acts: Tensor, read: Tensor | None = None) -> Tensor:
        out = replace(acts if read is None else read).to(acts.dtype)
        return out if keep_mask is None else torch.where(keep_mask[..., None], out, acts)

    handles = []
    if kind == "pair":  # a transcoder: the MLP's output := replace([MLP input | MLP output])
        inputs: list[Tensor] = []
        handles.append(module.register_forward_pre_hook(lambda mod, args: inputs.append(args[0])))
        module = layer.get_submodule(mlp_output_path(model))

        def pair_hook(mod, args, output):
            y = output[0] if isinstance(output, tuple) else output
            new = new_acts(y, torch.cat([inputs.pop(), y], dim=-1))
            return (new, *output[1:]) if isinstance(output, tuple) else new

        handles.append(module.register_forward_hook(pair_hook))
    elif kind == "output":

        def hook(mod, args, output):
            if isinstance(output, tuple):
                return (new_acts(output[0]), *output[1:])
            return new_acts(output)

        handles.append(module.register_forward_hook(hook))
    else:

        def pre_hook(mod, args):
            return (new_acts(args[0]), *args[1:])

        handles.append(module.register_forward_pre_hook(pre_hook))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def zero_ablation(point: SitePoint) -> Callable[[Tensor], Tensor]:
    """The replacement that zero-ablates the site: zeros as wide as what it writes (a
    transcoder's rows are [input | output]; it writes the output half)."""
    if point.site == "transcoder":
        return lambda rows: torch.zeros_like(rows[..., rows.shape[-1] // 2 :])
    return torch.zeros_like


# Positions per float32 slice of the logits: the vocabulary can be 256k wide (Gemma), where
# one [8, 1024, vocab] float32 copy of the logits is 8 GB. Logits stay in the model's dtype;
# losses and KL are summed over slices of this many positions.
CHUNK_POSITIONS = 256


def _targets(input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """Next-token targets [batch, seq-1], -100 where the target is padding."""
    return input_ids[:, 1:].masked_fill(attention_mask[:, 1:] == 0, -100)


def next_token_loss(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor, chunk: int = CHUNK_POSITIONS
) -> tuple[Tensor, Tensor]:
    """(mean cross-entropy over valid next-token targets, logits in the model's dtype)."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    flat = logits[:, :-1].reshape(-1, logits.shape[-1])
    targets = _targets(input_ids, attention_mask).reshape(-1)
    total = torch.zeros((), dtype=torch.float64, device=logits.device)
    for start in range(0, len(flat), chunk):
        total += F.cross_entropy(
            flat[start : start + chunk].float(),
            targets[start : start + chunk],
            ignore_index=-100,
            reduction="sum",
        ).double()
    count = (targets != -100).sum()
    return (total / count).float(), logits


def _kl(clean: Tensor, spliced: Tensor, valid: Tensor, chunk: int) -> Tensor:
    """Mean over valid positions of KL(clean || spliced), from logits [batch, seq, vocab]."""
    vocab = clean.shape[-1]
    c, s, v = clean.reshape(-1, vocab), spliced.reshape(-1, vocab), valid.reshape(-1)
    total = torch.zeros((), dtype=torch.float64, device=clean.device)
    for start in range(0, len(c), chunk):
        keep = v[start : start + chunk]
        log_p = c[start : start + chunk][keep].float().log_softmax(-1)
        log_q = s[start : start + chunk][keep].float().log_softmax(-1)
        total += (log_p.exp() * (log_p - log_q)).sum().double()
    return (total / v.sum()).float()


@torch.no_grad()
def spliced_losses(
    model: nn.Module,
    point: SitePoint,
    reconstruct: Callable[[Tensor], Tensor],
    input_ids: Tensor,
    attention_mask: Tensor,
    special_ids: list[int],
    clean: tuple[Tensor, Tensor] | None = None,
    chunk: int = CHUNK_POSITIONS,
) -> dict[str, Tensor]:
    """Clean, spliced and zero-ablated CE on one batch, plus delta LM loss, CE loss recovered
    ((H_zero - H_spliced) / (H_zero - H_clean)) and KL(clean || spliced) per valid position.

    ``clean`` = (loss, logits) of ``next_token_loss`` on the same batch, when the caller already
    ran the clean forward (e.g. to capture the site's activations in the same pass)."""
    keep = attention_mask.bool() & ~torch.isin(
        input_ids, torch.tensor(special_ids, device=input_ids.device)
    )
    clean, clean_logits = (
        clean if clean is not None else next_token_loss(model, input_ids, attention_mask, chunk)
    )
    with splice(model, point, reconstruct, keep):
        spliced, spliced_logits = next_token_loss(model, input_ids, attention_mask, chunk)
    with splice(model, point, zero_ablation(point), keep):
        zero, _ = next_token_loss(model, input_ids, attention_mask, chunk)
    valid = attention_mask[:, :-1].bool() & attention_mask[:, 1:].bool()
    kl = _kl(clean_logits[:, :-1], spliced_logits[:, :-1], valid, chunk)
    return {
        "ce_clean": clean,
        "ce_spliced": spliced,
        "ce_zero_ablation": zero,
        "delta_lm_loss": spliced - clean,
        "ce_loss_recovered": (zero - spliced) / (zero - clean),
        "kl_div": kl,
    }
