"""The row stream of a corpus: an SAE's training rows, in order, as the LM produces them.

    documents --tokenize, pack (contexts.py)--> LM batches --forward to the deepest hooked
    layer (sites.py)--> each site's activations at the kept positions (BOS/EOS/pad dropped)

Row ``i`` is the i-th kept position of the pass. Which rows an LM batch contributes is known
from its token ids alone, so batches wholly before ``start_row`` are counted WITHOUT running
the LM: a consumer that restarts in the middle (a resumed cache build, a resumed stream) pays
for tokenizing, not for the model. Both the activation cache and ``data=stream`` read this.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from saelab.lm.contexts import iter_token_batches, keep_mask, special_ids
from saelab.lm.sites import SitePoint, forward_until


@dataclass
class RowBatch:
    """One LM batch's share of the row stream."""

    index: int
    """The LM batch's number in the pass (counting every batch, taken or not)."""
    row0: int
    """Number of its first row in the row stream (of the taken batches)."""
    n: int
    """Rows it contributes (after the ``stop_row`` cut)."""
    acts: dict[SitePoint, Tensor] | None
    """{point: [n, d]} on the model's device in the model's dtype; None when skipped."""


def iter_rows(
    model: nn.Module,
    tokenizer,
    texts: Iterable[str],
    points: list[SitePoint],
    *,
    context_length: int,
    lm_batch_size: int,
    prepend_bos: bool = True,
    start_row: int = 0,
    stop_row: int | None = None,
    take: Callable[[int], bool] | None = None,
    lock=None,
) -> Iterator[RowBatch]:
    """The row stream's LM batches in order; rows before ``start_row`` come without ``acts``.

    ``take(index)`` chooses which LM batches belong to this stream (DDP ranks take disjoint
    ones); rows are numbered over the taken batches only. The stream ends at ``stop_row`` rows
    or when the texts run out. ``lock`` (a context manager) guards each forward: hooks are
    per model, so two threads must not run one model at once.
    """
    specials = special_ids(tokenizer)
    device = next(model.parameters()).device
    batches = iter_token_batches(tokenizer, texts, context_length, lm_batch_size, prepend_bos)
    row = 0
    for index, (ids, mask) in enumerate(batches):
        if stop_row is not None and row >= stop_row:
            return
        if take is not None and not take(index):
            continue
        keep = keep_mask(ids, mask, specials)
        n = int(keep.sum())
        if stop_row is not None:
            n = min(n, stop_row - row)
        if row + n <= start_row:  # before the restart point: counted from the ids alone
            yield RowBatch(index, row, n, None)
            row += n
            continue
        ids_t, mask_t = torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device)
        if lock is None:
            store = forward_until(model, ids_t, mask_t, points)
        else:
            with lock:
                store = forward_until(model, ids_t, mask_t, points)
        keep_t = torch.from_numpy(keep).to(device)
        yield RowBatch(index, row, n, {p: store[p][keep_t][:n] for p in points})
        row += n
