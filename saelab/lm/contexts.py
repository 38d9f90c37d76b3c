"""Documents -> fixed-length LM contexts, and which positions of them an SAE may train on.

Documents are tokenized without special tokens, each followed by <eos>, concatenated and cut
into rows of ``<bos> + (context_length - 1)`` tokens (``saelab.lm.heldout``'s packing, the way
the embedded model was pretrained and the way Gemma Scope fed Gemma 2). The last, ragged row is
padded and its padding masked out through the attention mask, so no text is dropped.

docs/maths.md §0: BOS, EOS and padding positions are never trained on. ``keep_mask`` marks the
rest. It depends only on the token ids, so the number of kept tokens of a batch is known
without running the LM (cache building relies on that to resume without recomputing).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from saelab.lm.heldout import encode_stream


def special_ids(tokenizer) -> dict[str, int | None]:
    """The ids of <bos>, <eos> and <pad> (None where the tokenizer has no such token)."""
    return {
        "bos": tokenizer.bos_token_id,
        "eos": tokenizer.eos_token_id,
        "pad": tokenizer.pad_token_id,
    }


def keep_mask(input_ids: np.ndarray, attention_mask: np.ndarray, tokenizer_or_ids) -> np.ndarray:
    """True where a position is real text: attended to and not <bos>/<eos>/<pad>."""
    ids = tokenizer_or_ids if isinstance(tokenizer_or_ids, dict) else special_ids(tokenizer_or_ids)
    drop = [i for i in ids.values() if i is not None]
    return attention_mask.astype(bool) & ~np.isin(input_ids, drop)


def _fast(tokenizer):
    # The Rust tokenizer behind a transformers fast tokenizer: batched, and it does not warn
    # about documents longer than model_max_length (we cut them into contexts ourselves).
    return getattr(tokenizer, "backend_tokenizer", tokenizer)


def iter_token_batches(
    tokenizer,
    texts: Iterable[str],
    context_length: int,
    batch_size: int,
    prepend_bos: bool = True,
    docs_per_chunk: int = 4,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(input_ids, attention_mask)``, int64 arrays [batch_size, context_length].

    The sequence of batches is a pure function of the texts and arguments (batch j always
    holds the same contexts), which makes LM activations reproducible batch by batch. The
    final batch may have fewer rows; its last row may be right-padded (attention mask 0).
    """
    ids = special_ids(tokenizer)
    if ids["eos"] is None:
        raise ValueError("the tokenizer has no <eos> token; documents cannot be separated")
    if prepend_bos and ids["bos"] is None:
        raise ValueError(
            "model.prepend_bos=true but the tokenizer has no <bos> token; set it to false"
        )
    pad = ids["pad"] if ids["pad"] is not None else ids["eos"]  # masked either way
    body = context_length - 1 if prepend_bos else context_length
    if body < 1:
        raise ValueError(f"context_length={context_length} is too short: it must be >= 2")

    rows: list[np.ndarray] = []  # -1 marks padding until a batch is emitted

    def add_rows(stream: np.ndarray) -> np.ndarray:
        n = len(stream) // body
        for r in stream[: n * body].reshape(n, body):
            rows.append(np.concatenate([[ids["bos"]], r]) if prepend_bos else r)
        return stream[n * body :]

    def emit(final: bool) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        while len(rows) >= batch_size or (final and rows):
            batch = np.stack(rows[:batch_size]).astype(np.int64)
            del rows[:batch_size]
            mask = (batch != -1).astype(np.int64)
            batch[mask == 0] = pad
            yield batch, mask

    pending = np.zeros(0, dtype=np.int64)
    chunk: list[str] = []
    for text in texts:
        chunk.append(text)
        if len(chunk) == docs_per_chunk:
            pending = add_rows(
                np.concatenate([pending, encode_stream(_fast(tokenizer), chunk, ids["eos"])])
            )
            chunk = []
            yield from emit(final=False)
    if chunk:
        pending = add_rows(
            np.concatenate([pending, encode_stream(_fast(tokenizer), chunk, ids["eos"])])
        )
    if len(pending):  # the ragged tail: padded and masked, never dropped
        tail = np.full(body, -1, dtype=np.int64)
        tail[: len(pending)] = pending
        add_rows(tail)
    yield from emit(final=True)
