"""Which output tokens a latent's decoder direction promotes and suppresses (the "logit lens"
on W_dec, as feature dashboards show it).

A latent writes ``a * W_dec[i]`` into the site (resid: the residual stream after block L;
mlp: the MLP branch as it is added to the residual stream). Its DIRECT effect on the logits is
that vector carried to the output: through the final norm and the unembedding W_U. We take

    effect_i = W_U @ (g * W_dec[i])        g = the final norm's per-dimension gain

This is a first-order approximation of the direct path, and the page says so:
- The final RMSNorm divides by the rms of the WHOLE residual vector, which the direction alone
  does not know. To first order that is one positive factor 1/rms shared by every vocabulary
  entry: it rescales the effect, not which tokens rank highest. (The rms also changes with the
  push, a term along the residual itself; it is small unless the direction is aligned with the
  residual, and ignored.)
- Layers above L also read and rewrite the direction (the indirect path); ignored.
- Gemma 2 soft-caps the final logits (``cap * tanh(logit / cap)``), which damps changes of
  logits already near the cap. The values shown are pre-cap.
- For ``attn`` there is no such direct direction: the site sits before the output projection
  and Gemma 2's post-attention norm, which rescales by the whole attention output. We refuse it.
tests/browser/test_logits.py checks the approximation against the model's own final norm, head
and soft-cap on a real residual (correlation of the logit changes > 0.95).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

DIRECT_SITES = ("resid", "mlp")


def final_norm(model: nn.Module) -> nn.Module:
    """The norm applied before the LM head: ``model.model.norm`` (Gemma 2, Llama) or
    ``model.norm``."""
    for path in ("model.norm", "norm"):
        try:
            return model.get_submodule(path)
        except AttributeError:
            continue
    raise ValueError(
        f"cannot find the final norm of {type(model).__name__}: looked for `model.norm` and "
        "`norm` (Gemma 2 and Llama-style layouts). Use --no-logits to browse without output tokens."
    )


def norm_gain(norm: nn.Module, d_model: int) -> Tensor:
    """The norm's per-dimension gain g, read off the module itself: a vector of ones has rms 1,
    so an RMSNorm maps it to (about) its gain. This covers Gemma's ``x * (1 + weight)`` and
    Llama's ``x * weight`` without special cases."""
    p = next(norm.parameters(), None)
    ones = torch.ones(1, d_model, dtype=p.dtype if p is not None else torch.float32)
    with torch.no_grad():
        g = norm(ones).float().reshape(-1)
    if g.shape[0] != d_model or not torch.isfinite(g).all() or g.abs().max() < 1e-6:
        # A LayerNorm subtracts the mean and maps the ones vector to zero: not an RMSNorm.
        raise ValueError(
            f"{type(norm).__name__} does not act as an RMSNorm (gain read from a ones vector is "
            f"{g[:4].tolist()}...); the decoder-direction logits assume an RMSNorm before the head."
        )
    return g


def unembedding(model: nn.Module) -> Tensor:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None or getattr(head, "weight", None) is None:
        raise ValueError(
            f"{type(model).__name__} has no output embedding (LM head); the decoder-direction "
            "logits need one. Use --no-logits to browse without output tokens."
        )
    return head.weight  # [vocab, d_model]


@torch.no_grad()
def direction_logits(
    model: nn.Module, W_dec: Tensor, site: str, top_n: int = 10, chunk: int = 128
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(promoted ids, promoted values, suppressed ids, suppressed values), each [d_sae, top_n],
    promoted in decreasing and suppressed in increasing order of the direct logit effect per unit
    of activation. Latents are done ``chunk`` at a time so a 256k vocabulary never makes a
    [d_sae, vocab] matrix."""
    if site not in DIRECT_SITES:
        raise ValueError(
            f"site={site!r} has no direct unembedding direction: it is read before the attention "
            f"output projection and its norm. Output tokens are computed for {DIRECT_SITES} only."
        )
    W_U = unembedding(model)
    g = norm_gain(final_norm(model), W_U.shape[1])
    if W_dec.shape[1] != W_U.shape[1]:
        raise ValueError(
            f"W_dec rows have width {W_dec.shape[1]} but the model's d_model is "
            f"{W_U.shape[1]}: this SAE was not trained on this model's {site} site"
        )
    W_U = W_U.float()
    top_n = min(top_n, W_U.shape[0])
    out = [[], [], [], []]
    for start in range(0, W_dec.shape[0], chunk):
        effect = (W_dec[start : start + chunk].float() * g) @ W_U.T  # [chunk, vocab]
        up, down = effect.topk(top_n, dim=1), effect.topk(top_n, dim=1, largest=False)
        for lst, t in zip(out, (up.indices, up.values, down.indices, down.values)):
            lst.append(t)
    return tuple(torch.cat(lst) for lst in out)  # type: ignore[return-value]
