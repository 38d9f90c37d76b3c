"""Splicing a reconstruction into the model's forward, for the paper's headline metric:
delta LM loss = CE(next token | x_hat spliced in at the site) - CE(clean) (docs/maths.md §6).

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

from .sites import SitePoint, _module_path, check_points, decoder_layers


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

    def new_acts(acts: Tensor) -> Tensor:
        out = replace(acts).to(acts.dtype)
        return out if keep_mask is None else torch.where(keep_mask[..., None], out, acts)

    if kind == "output":

        def hook(mod, args, output):
            if isinstance(output, tuple):
                return (new_acts(output[0]), *output[1:])
            return new_acts(output)

        handle = module.register_forward_hook(hook)
    else:

        def pre_hook(mod, args):
            return (new_acts(args[0]), *args[1:])

        handle = module.register_forward_pre_hook(pre_hook)
    try:
        yield
    finally:
        handle.remove()


def next_token_loss(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor
) -> tuple[Tensor, Tensor]:
    """(mean cross-entropy over valid next-token targets, logits)."""
    logits = model(
        input_ids=input_ids, attention_mask=attention_mask, use_cache=False
    ).logits.float()
    targets = input_ids[:, 1:].masked_fill(attention_mask[:, 1:] == 0, -100)
    loss = F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100
    )
    return loss, logits


@torch.no_grad()
def spliced_losses(
    model: nn.Module,
    point: SitePoint,
    reconstruct: Callable[[Tensor], Tensor],
    input_ids: Tensor,
    attention_mask: Tensor,
    special_ids: list[int],
    clean: tuple[Tensor, Tensor] | None = None,
) -> dict[str, Tensor]:
    """Clean, spliced and zero-ablated CE on one batch, plus delta LM loss, CE loss recovered
    ((H_zero - H_spliced) / (H_zero - H_clean)) and KL(clean || spliced) per valid position.

    ``clean`` = (loss, logits) of ``next_token_loss`` on the same batch, when the caller already
    ran the clean forward (e.g. to capture the site's activations in the same pass)."""
    keep = attention_mask.bool() & ~torch.isin(
        input_ids, torch.tensor(special_ids, device=input_ids.device)
    )
    clean, clean_logits = (
        clean if clean is not None else next_token_loss(model, input_ids, attention_mask)
    )
    with splice(model, point, reconstruct, keep):
        spliced, spliced_logits = next_token_loss(model, input_ids, attention_mask)
    with splice(model, point, torch.zeros_like, keep):
        zero, _ = next_token_loss(model, input_ids, attention_mask)
    valid = attention_mask[:, :-1].bool() & attention_mask[:, 1:].bool()
    kl = (
        F.kl_div(
            spliced_logits[:, :-1].log_softmax(-1),
            clean_logits[:, :-1].log_softmax(-1),
            log_target=True,
            reduction="none",
        )
        .sum(-1)[valid]
        .mean()
    )
    return {
        "ce_clean": clean,
        "ce_spliced": spliced,
        "ce_zero_ablation": zero,
        "delta_lm_loss": spliced - clean,
        "ce_loss_recovered": (zero - spliced) / (zero - clean),
        "kl_div": kl,
    }
