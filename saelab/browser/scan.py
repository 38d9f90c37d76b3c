"""One streamed pass over held-out text: per-latent statistics and top-activating contexts.

Memory is bounded by the SAE's width, never by the number of tokens scanned: each LM batch is
encoded, folded into running counters, and dropped. Top contexts are a running top-k merge: the
batch's own top-k per latent (``torch.topk`` over the batch's [tokens, d_sae] activations) is
concatenated with the k kept so far and cut back to k. The window of tokens around each
candidate, with the latent's activation on every token of it, is gathered while the batch is
still in memory, so no second pass over the text is needed to shade the contexts.

Positions that are not real text (BOS, EOS, padding; ``keep_mask``) are treated as "did not
fire": they are never counted, never picked as a top context, and shade as zero in a window
(BOS typically carries huge activations that say nothing about a latent: docs/maths.md §0).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from saelab.console import finish_bar
from saelab.lm.contexts import iter_token_batches, keep_mask
from saelab.lm.sites import SitePoint, forward_until

# Histogram bins are fixed in advance (the pass is single, so per-latent ranges are unknown
# until it ends): log10-spaced, BINS_PER_DECADE per decade from 10**HIST_LOG10_MIN. Activations
# of different latents span orders of magnitude; log bins keep every latent's shape readable.
# Values outside the range land in the first or last bin. 50 per decade: a latent whose
# activations span a factor of 2 (common above a JumpReLU threshold) still gets ~15 bins.
HIST_LOG10_MIN, HIST_LOG10_MAX, BINS_PER_DECADE = -3, 5, 50
N_BINS = (HIST_LOG10_MAX - HIST_LOG10_MIN) * BINS_PER_DECADE
PAD_ID = -1  # window slots outside the context row


@dataclass
class ScanResult:
    """What the scan collected; ``k`` = top contexts per latent, ``w`` = window = 2 * context + 1.

    ``top_values`` are sorted in decreasing order; slots where a latent fired fewer than k times
    hold 0 and ``top_positions`` -1. A position is ``row * context_length + offset`` in the
    sequence of scanned LM contexts.
    """

    tokens: int  # real-text tokens scanned (the density denominator)
    contexts: int  # LM context rows read
    context_length: int
    fires: Tensor  # [d_sae] int64: tokens on which the latent is nonzero
    act_sum: Tensor  # [d_sae] float64: sum of activations (mean when firing = sum/fires)
    max_act: Tensor  # [d_sae]
    hist: Tensor  # [d_sae, N_BINS] int64 counts of nonzero activations
    top_values: Tensor  # [d_sae, k]
    top_positions: Tensor  # [d_sae, k] int64
    window_ids: Tensor  # [d_sae, k, w] int64 token ids, PAD_ID outside the row
    window_acts: Tensor  # [d_sae, k, w] float32: the latent's activation on each token

    @property
    def density(self) -> Tensor:
        return self.fires.double() / max(self.tokens, 1)


class LatentScanner:
    """Accumulates statistics batch by batch; ``update`` takes one LM batch's activations."""

    def __init__(self, d_sae: int, top_k: int, context: int, context_length: int):
        if top_k < 1 or context < 0:
            raise ValueError(f"top_k={top_k} must be >= 1 and context={context} >= 0")
        self.k, self.context, self.context_length = top_k, context, context_length
        w = 2 * context + 1
        self.fires = torch.zeros(d_sae, dtype=torch.int64)
        self.act_sum = torch.zeros(d_sae, dtype=torch.float64)
        self.max_act = torch.zeros(d_sae)
        self.hist = torch.zeros(d_sae * N_BINS, dtype=torch.int64)
        # Start below any activation so the first real candidates always enter.
        self.top_values = torch.full((d_sae, top_k), -1.0)
        self.top_positions = torch.full((d_sae, top_k), -1, dtype=torch.int64)
        self.window_ids = torch.full((d_sae, top_k, w), PAD_ID, dtype=torch.int64)
        self.window_acts = torch.zeros(d_sae, top_k, w)
        self.tokens = self.rows = 0

    @torch.no_grad()
    def update(self, ids: Tensor, keep: Tensor, f: Tensor) -> None:
        """ids, keep [B, T]; f [B, T, d_sae] the latents' activations on that batch."""
        B, T, M = f.shape
        f = f.float() * keep.unsqueeze(-1)  # not-text positions never fire (module docstring)
        fk = f[keep]
        nz = fk != 0
        self.fires += nz.sum(0)
        self.act_sum += fk.sum(0, dtype=torch.float64)
        if fk.shape[0]:
            self.max_act = torch.maximum(self.max_act, fk.max(0).values)
        self._histogram(fk, nz)
        self._merge_top(ids, f.reshape(B * T, M), T)
        self.tokens += int(keep.sum())
        self.rows += B

    def _histogram(self, fk: Tensor, nz: Tensor) -> None:
        tok, lat = nz.nonzero(as_tuple=True)
        vals = fk[tok, lat].abs().double().clamp_min(1e-30).log10()
        bins = ((vals - HIST_LOG10_MIN) * BINS_PER_DECADE).floor().long().clamp(0, N_BINS - 1)
        self.hist += torch.bincount(lat * N_BINS + bins, minlength=self.hist.numel())

    def _merge_top(self, ids: Tensor, flat: Tensor, T: int) -> None:
        k = min(self.k, flat.shape[0])
        vals, local = torch.topk(flat, k, dim=0)  # [k, M]: the batch's candidates per latent
        vals, local = vals.T, local.T  # [M, k]
        row, col = local // T, local % T
        offsets = torch.arange(-self.context, self.context + 1)
        cols = col.unsqueeze(-1) + offsets  # [M, k, w]
        inside = (cols >= 0) & (cols < T)
        cols_c = cols.clamp(0, T - 1)
        rows = row.unsqueeze(-1).expand_as(cols)
        latent = torch.arange(flat.shape[1]).view(-1, 1, 1).expand_as(cols)
        win_ids = torch.where(inside, ids[rows, cols_c], PAD_ID)
        win_acts = torch.where(inside, flat[rows * T + cols_c, latent], 0.0)
        positions = (self.rows + row) * T + col

        all_vals = torch.cat([self.top_values, vals], 1)
        keep_vals, pick = torch.topk(all_vals, self.k, dim=1)
        self.top_values = keep_vals
        self.top_positions = torch.cat([self.top_positions, positions], 1).gather(1, pick)
        pick3 = pick.unsqueeze(-1).expand(-1, -1, offsets.numel())
        self.window_ids = torch.cat([self.window_ids, win_ids], 1).gather(1, pick3)
        self.window_acts = torch.cat([self.window_acts, win_acts], 1).gather(1, pick3)

    def result(self) -> ScanResult:
        # Slots that never got a firing token (value <= 0) are emptied, so a latent that fired
        # 3 times shows exactly 3 contexts.
        empty = self.top_values <= 0
        return ScanResult(
            tokens=self.tokens,
            contexts=self.rows,
            context_length=self.context_length,
            fires=self.fires,
            act_sum=self.act_sum,
            max_act=self.max_act,
            hist=self.hist.view(-1, N_BINS),
            top_values=self.top_values.masked_fill(empty, 0.0),
            top_positions=self.top_positions.masked_fill(empty, -1),
            window_ids=self.window_ids.masked_fill(empty.unsqueeze(-1), PAD_ID),
            window_acts=self.window_acts.masked_fill(empty.unsqueeze(-1), 0.0),
        )


@torch.no_grad()
def scan_latents(
    sae: nn.Module,
    model: nn.Module,
    tokenizer,
    point: SitePoint,
    texts: Iterable[str],
    *,
    context_length: int,
    n_tokens: int,
    top_k: int = 20,
    context: int = 10,
    lm_batch_size: int = 8,
    prepend_bos: bool = True,
    progress: bool = True,
) -> ScanResult:
    """Run ``model`` over ``texts`` until ``n_tokens`` real-text tokens were scanned (whole
    batches, so slightly more), encoding the site's activations with ``sae`` (which must act on
    RAW activations, as exported SAEs do)."""
    if n_tokens < 1:
        raise ValueError(f"--tokens={n_tokens}: scan at least one token")
    sae = sae.eval()
    scanner = LatentScanner(sae.d_sae, top_k, context, context_length)
    bar = tqdm(
        total=n_tokens,
        desc=f"scanning {point.site}@{point.layer}",
        unit="tok",
        disable=not progress,
    )
    for ids_np, mask_np in iter_token_batches(
        tokenizer, texts, context_length, lm_batch_size, prepend_bos
    ):
        keep = torch.from_numpy(keep_mask(ids_np, mask_np, tokenizer))
        ids, mask = torch.from_numpy(ids_np), torch.from_numpy(mask_np)
        x = forward_until(model, ids, mask, [point])[point].float()
        B, T, d = x.shape
        f = sae.encode(x.reshape(B * T, d)).reshape(B, T, -1)
        scanner.update(ids, keep, f)
        bar.update(int(keep.sum()))
        if scanner.tokens >= n_tokens:
            break
    finish_bar(bar)  # whole batches overshoot n_tokens; a short split ends below it
    if scanner.tokens == 0:
        raise ValueError(
            "no tokens to scan: the validation split is empty or shorter than one context"
        )
    return scanner.result()
