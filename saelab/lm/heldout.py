"""Held-out cross-entropy of a causal LM and of n-gram baselines, on the SAME tokens.

Everything here works on packed sequences `[N, T]` whose position 0 is <bos>: the scored
(context, target) pairs are positions 1..T-1 of every row, for the LM and the baselines
alike, so the numbers are directly comparable (nats per token).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch


def encode_stream(tokenizer, texts: Iterable[str], eos_id: int) -> np.ndarray:
    """Token ids of all texts back to back, each document followed by <eos>, no <bos>.

    `tokenizer` is a `tokenizers.Tokenizer` (fast, batched) or a transformers tokenizer.
    """
    texts = list(texts)
    if hasattr(tokenizer, "encode_batch"):
        ids = [e.ids for e in tokenizer.encode_batch(texts, add_special_tokens=False)]
    else:
        ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    out: list[int] = []
    for doc in ids:
        out.extend(doc)
        out.append(eos_id)
    return np.asarray(out, dtype=np.int64)


def pack(stream: np.ndarray, context: int, bos_id: int) -> np.ndarray:
    """Cut the stream into rows of <bos> + (context - 1) tokens; the ragged tail is dropped.

    Every row starts with <bos> because that is how the model is used afterwards (Gemma
    Scope contexts start with BOS), so the model learns to treat it as an attention sink.
    """
    body = context - 1
    n = len(stream) // body
    rows = stream[: n * body].reshape(n, body)
    return np.concatenate([np.full((n, 1), bos_id, dtype=np.int64), rows], axis=1)


def pairs(seqs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(previous token, target token) for every scored position."""
    return seqs[:, :-1].ravel(), seqs[:, 1:].ravel()


def unigram_nll(train: np.ndarray, held: np.ndarray, vocab_size: int) -> float:
    """Mean NLL of held-out targets under add-one-smoothed train target frequencies."""
    _, train_next = pairs(train)
    _, held_next = pairs(held)
    probs = _unigram_probs(train_next, vocab_size)
    return float(-np.log(probs[held_next]).mean())


def _unigram_probs(targets: np.ndarray, vocab_size: int) -> np.ndarray:
    counts = np.bincount(targets, minlength=vocab_size).astype(np.float64)
    return (counts + 1.0) / (counts.sum() + vocab_size)


def bigram_nll(
    train: np.ndarray,
    held: np.ndarray,
    vocab_size: int,
    alphas: Iterable[float] = (0.3, 1, 3, 10, 30, 100),
) -> tuple[float, float]:
    """Best held-out NLL of a bigram model smoothed towards the unigram, and its alpha.

    p(w | v) = (c(v, w) + alpha * p_uni(w)) / (c(v) + alpha)  (Dirichlet / interpolated
    smoothing: always finite). alpha is picked on the held-out tokens themselves, which
    flatters the baseline: a model that beats it beats every alpha in the grid.
    """
    prev, nxt = pairs(train)
    p_uni = _unigram_probs(nxt, vocab_size)
    codes, counts = np.unique(prev * vocab_size + nxt, return_counts=True)
    ctx_counts = np.bincount(prev, minlength=vocab_size).astype(np.float64)

    h_prev, h_next = pairs(held)
    h_codes = h_prev * vocab_size + h_next
    idx = np.clip(np.searchsorted(codes, h_codes), 0, len(codes) - 1)
    pair_counts = np.where(codes[idx] == h_codes, counts[idx], 0).astype(np.float64)

    results = []
    for alpha in alphas:
        p = (pair_counts + alpha * p_uni[h_next]) / (ctx_counts[h_prev] + alpha)
        results.append((float(-np.log(p).mean()), float(alpha)))
    return min(results)


@torch.no_grad()
def model_nll(model, held: np.ndarray, batch_size: int = 16) -> float:
    """Mean NLL (nats/token) of `model` on the held-out rows, positions 1..T-1 as targets."""
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(held), batch_size):
        x = torch.from_numpy(held[start : start + batch_size]).to(model.device)
        logits = model(input_ids=x).logits[:, :-1].float()
        nll = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum"
        )
        total += float(nll)
        count += x[:, 1:].numel()
    return total / count
