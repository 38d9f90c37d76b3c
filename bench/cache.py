"""How fast activations are cached and delivered, next to what bounds each step. Prints a table.

    OMP_NUM_THREADS=1 python bench/cache.py                 # ~3 min on one CPU core
    python bench/cache.py --tokens 131072 --read-mb 1024    # bigger samples

1. The LM's bare forward, stopped at the layer (no hooks kept), vs the whole caching pass
   (tokenize, forward, hook, drop BOS/EOS/pad, shuffle buffer, encode, write, checksum) on the
   same contexts, in interleaved rounds (best of each). Target: caching at most 10% slower.
2. The DataModule's loader (shuffled contiguous blocks from memory maps -> float32 batches)
   vs a plain sequential read of the same shard files, both from the page cache (warm; a cold
   read is bounded by the disk for both), best of 3 interleaved epochs each, with and without
   the background prefetch thread. Target: at least 50% of the sequential rate.
3. What training consumes: one JumpReLU step (saelab.sae, d_in 128, d_sae 1024, batch 4096:
   forward, backward, decoder-gradient projection, Adam, renormalisation), alone and fed by
   the loader (with its background prefetch).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from saelab.data import shards
from saelab.data.batches import ActivationLoader
from saelab.data.cache import MANIFEST, ActivationCache
from saelab.data.cache_build import CacheBuilder, LMSource
from saelab.fileio import write_json
from saelab.lm import corpus
from saelab.lm.config import ModelConfig
from saelab.lm.contexts import iter_token_batches, keep_mask
from saelab.lm.load import load_model, load_tokenizer
from saelab.lm.sites import forward_until
from saelab.sae import build_sae


def lm_rates(
    tokens: int, layer: int, lm_batch: int, root: Path, rounds: int = 2
) -> dict[str, float]:
    model, tok = load_model("tiny-gemma-2"), load_tokenizer("tiny-gemma-2")
    source = LMSource(model=ModelConfig(), lm_batch_size=lm_batch, progress=False)
    spec = source.spec("train", "resid", layer, tokens, shard_tokens=65_536)
    # The same LM batches the cache pass will run, tokenized up front (not timed).
    batches, kept = [], 0
    for ids, mask in iter_token_batches(tok, corpus.iter_documents(None, "train"), 256, lm_batch):
        batches.append((torch.from_numpy(ids), torch.from_numpy(mask)))
        kept += int(keep_mask(ids, mask, tok).sum())
        if kept >= tokens:
            break
    forward_until(model, *batches[0], [], stop_at=layer)  # warm-up

    def bare_pass() -> float:
        for ids, mask in batches:
            forward_until(model, ids, mask, [], stop_at=layer)

    def cache_pass(round_: int) -> None:
        # The model loaded above: time the pass, not the model load.
        builder = CacheBuilder(source, root / str(round_), lm=(model, tok))
        builder.ensure([spec])

    # Interleaved rounds, best of each: another process shares this machine, and its load
    # comes and goes; alternating keeps either side from getting only the quiet moments.
    wall, cpu = {"bare": [], "cache": []}, {"bare": [], "cache": []}
    for round_ in range(rounds):
        for name, run in (("bare", bare_pass), ("cache", lambda r=round_: cache_pass(r))):
            w, c = time.perf_counter(), time.process_time()
            run()
            wall[name].append(time.perf_counter() - w)
            cpu[name].append(time.process_time() - c)
    return {
        "bare": tokens / min(wall["bare"]),
        "cache": tokens / min(wall["cache"]),
        "cpu_overhead": min(cpu["cache"]) / min(cpu["bare"]) - 1,
    }


def make_cache(
    folder: Path, mb: int, dtype: str, shard_rows: int = 262_144, d_in: int = 128
) -> ActivationCache:
    """A cache of random rows in the real on-disk format (content does not affect speed)."""
    folder.mkdir(parents=True)
    rows = mb * 2**20 // (d_in * 4)
    g = torch.Generator().manual_seed(0)
    entries = []
    for i, start in enumerate(range(0, rows, shard_rows)):
        x = torch.randn(min(shard_rows, rows - start), d_in, generator=g)
        entries.append(shards.write_array(folder / f"shard_{i:05d}.npy", shards.encode(x, dtype)))
    write_json(
        folder / MANIFEST,
        {
            "key": f"bench-{dtype}",
            "spec": {"dtype": dtype},
            "d_in": d_in,
            "shards": entries,
            "mean_squared_norm": 1.0,
        },
    )
    return ActivationCache(folder, verify="never")


def sequential_read(cache: ActivationCache) -> float:
    """GB/s of reading every shard file start to end into one reused buffer."""
    files = [cache.folder / e["file"] for e in cache.manifest["shards"]]
    buf = bytearray(1 << 24)
    total, start = 0, time.perf_counter()
    for path in files:
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(buf):
                total += n
    return total / (time.perf_counter() - start) / 1e9


def loader_rate(cache: ActivationCache, batch: int, prefetch: int) -> float:
    """GB/s of float32 batches delivered by one epoch of the loader."""
    loader = ActivationLoader(cache, batch, 512, seed=0, prefetch=prefetch)
    total, start = 0, time.perf_counter()
    for x in loader:
        total += x.numel() * 4
    return total / (time.perf_counter() - start) / 1e9


def sae_steps(batches, steps: int) -> float:
    """Seconds per JumpReLU training step on the given batches (an iterator of tensors)."""
    sae = build_sae("jumprelu", d_in=128, d_sae=1024)
    opt = torch.optim.Adam(sae.parameters(), lr=7e-5, betas=(0.0, 0.999))
    start = None
    for i in range(steps + 2):
        if i == 2:  # two warm-up steps
            start = time.perf_counter()
        x = next(batches)
        out = sae(x, sparsity_scale=1.0)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        sae.remove_parallel_decoder_grad()
        opt.step()
        sae.normalize_decoder()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--tokens", type=int, default=65_536, help="tokens for the LM/caching rates"
    )
    parser.add_argument("--rounds", type=int, default=2, help="interleaved bare/cache rounds")
    parser.add_argument("--layer", type=int, default=12)
    parser.add_argument("--lm-batch", type=int, default=8)
    parser.add_argument("--read-mb", type=int, default=512, help="size of the cache for read rates")
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        lm = lm_rates(args.tokens, args.layer, args.lm_batch, tmp / "lm", args.rounds)
        overhead = lm["bare"] / lm["cache"] - 1
        rows.append(
            (
                f"LM bare forward, stopped at layer {args.layer}",
                f"{lm['bare']:,.0f} tok/s",
                "baseline",
            )
        )
        rows.append(
            (
                "caching pass (tokenize..write, checksums)",
                f"{lm['cache']:,.0f} tok/s",
                f"{overhead:+.1%} wall, {lm['cpu_overhead']:+.1%} CPU time vs bare (target <= +10%)",
            )
        )
        rate = {}
        for dtype in ("float32", "bfloat16"):
            cache = make_cache(tmp / dtype, args.read_mb, dtype)
            sequential_read(cache)  # warm the page cache for both readers
            # Interleaved rounds, best of each (a throughput is its best case on a shared box).
            seq, direct, ahead = [], [], []
            for _ in range(3):
                seq.append(sequential_read(cache))
                direct.append(loader_rate(cache, 4096, prefetch=0))
                ahead.append(loader_rate(cache, 4096, prefetch=2))
            seq, direct, ahead = max(seq), max(direct), max(ahead)
            rate[dtype] = ahead
            rows.append(
                (f"sequential read of the shard files ({dtype})", f"{seq:.2f} GB/s", "file bytes")
            )
            for label, got in (("no prefetch", direct), ("prefetch 2, default", ahead)):
                rows.append(
                    (
                        f"DataModule loader, {label} ({dtype} cache)",
                        f"{got:.2f} GB/s",
                        f"{got / seq:.0%} of sequential (target >= 50%); float32 bytes out",
                    )
                )
        fixed = torch.randn(4096, 128)
        alone = sae_steps(iter(lambda: fixed, None), args.steps)
        sae_gbs = 4096 * 128 * 4 / alone / 1e9
        rows.append(
            (
                "SAE JumpReLU step (d_in 128, d_sae 1024, batch 4096)",
                f"{sae_gbs:.3f} GB/s",
                f"{4096 / alone:,.0f} tok/s; loader is {rate['float32'] / sae_gbs:,.0f}x faster",
            )
        )
        cache = ActivationCache(tmp / "float32", verify="never")
        fed = sae_steps(iter(ActivationLoader(cache, 4096, 512, seed=1, prefetch=2)), args.steps)
        rows.append(
            (
                "SAE step fed by the loader",
                f"{4096 * 128 * 4 / fed / 1e9:.3f} GB/s",
                f"{fed / alone - 1:+.1%} time vs a fixed in-memory batch",
            )
        )
    print(
        f"\ntorch threads: {torch.get_num_threads()}, numpy {np.__version__}, torch {torch.__version__}\n"
    )
    print("| measurement | rate | note |\n|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
