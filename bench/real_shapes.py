"""The whole pipeline at Gemma 2 2B's real shapes, with random weights (nothing downloaded).

    OMP_NUM_THREADS=1 python bench/real_shapes.py              # this CPU: ~30-60 minutes
    python bench/real_shapes.py --device cuda ...              # bench/gpu_smoke.sh does this

Gemma 2 2B is built from its published shape (26 layers, hidden 2304, MLP 9216, 8 query heads
x 256 with 4 KV heads, vocab 256,000, sliding window 4096, attention and final-logit
soft-capping; bf16), with random weights, saved once as a Hugging Face folder and then used
exactly like a user's model: ``model.name_or_path=<folder>``, no shape key given. Its tokenizer
is the embedded tiny-gemma-2's (same special ids as Gemma's: pad 0, eos 1, bos 2; 8,192 tokens):
the ids it produces are valid inputs of the 256,000-row embedding, and neither the truncated
forward nor the SAE depends on the vocabulary's size (only the weights' memory does, and the
full 256k embedding is there).

Each phase runs in its own process (so peak memory is per phase):

1. ``cache``: loads the LM; after one untimed forward (the weights are memory-mapped: the
   first forward pages them in), times the bare forward stopped at the layer
   (``forward_until`` with no capture) and the whole caching pass (tokenize, forward, hook,
   drop BOS/EOS/pad, shuffle buffer, write, checksum) over the same contexts, in interleaved
   rounds (bare, cache, bare, cache), in wall and in CPU seconds, best of each. Target:
   caching at >= 90% of the bare forward's tokens/s.
2. ``data=stream`` + a JumpReLU SAE of each width (16k and 65k latents) for a few steps (the
   LM and the SAE in one process, as in a real streaming run).
3. A JumpReLU SAE of each width on the cache, a few steps.

Training tokens/s come from the wall-clock times TensorBoard records for each step's loss
(``log_every_n_steps=1``), between the first and the last logged step. Peak memory is the
phase process's peak resident set size (``getrusage(RUSAGE_SELF).ru_maxrss``: resident pages,
file-backed ones included) and on CUDA ``torch.cuda.max_memory_allocated``. Target: peak <=
the LM's weights (if the phase loads it) + the SAE's own state (parameters, gradients, Adam's
two moments: 16 bytes per parameter) + 2 GiB.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GIB = 2**30
# Gemma 2 2B and 9B as published (the models' config.json on the hub).
GEMMA_2_2B = dict(
    vocab_size=256_000,
    hidden_size=2304,
    intermediate_size=9216,
    num_hidden_layers=26,
    num_attention_heads=8,
    num_key_value_heads=4,
    head_dim=256,
    sliding_window=4096,
    query_pre_attn_scalar=256,
    attn_logit_softcapping=50.0,
    final_logit_softcapping=30.0,
    max_position_embeddings=8192,
)
GEMMA_2_9B = {
    **GEMMA_2_2B,
    "hidden_size": 3584,
    "intermediate_size": 14336,
    "num_hidden_layers": 42,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
}
# The same layout at toy size, for testing this script in seconds.
TOY = {
    **GEMMA_2_2B,
    "vocab_size": 8192,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 4,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 32,
    "query_pre_attn_scalar": 32,
}
SHAPES = {"gemma-2-2b": GEMMA_2_2B, "toy": TOY}


def gemma_config(shape: dict):
    from transformers import Gemma2Config

    from saelab.lm.load import load_tokenizer

    tok = load_tokenizer("tiny-gemma-2")
    return Gemma2Config(
        **shape,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
        dtype="bfloat16",
    )


# --- phases (each in its own process) ---------------------------------------------------------
def phase_make(a) -> dict:
    """The model folder: random bf16 weights (seeded), the embedded tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM

    from saelab.lm.load import EMBEDDED

    folder = Path(a.folder)
    if (folder / "complete").is_file():
        return {"made": False}
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    with torch.device(a.device):
        model = AutoModelForCausalLM.from_config(
            gemma_config(SHAPES[a.shape]), dtype=torch.bfloat16
        )
    model.save_pretrained(tmp)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (EMBEDDED["tiny-gemma-2"] / name).is_file():
            shutil.copy(EMBEDDED["tiny-gemma-2"] / name, tmp / name)
    (tmp / "complete").write_text("random weights, seed 0\n")
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return {"made": True, "seconds": time.perf_counter() - t0}


def _compose(a, overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from saelab.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=[*common_overrides(a), *overrides])


def common_overrides(a) -> list[str]:
    return [
        f"model.name_or_path={a.folder}",
        "model.dtype=bfloat16",
        f"model.context_length={a.context}",
        f"layer={a.layer}",
        "site=resid",
        f"data.lm_batch_size={a.lm_batch_size}",
        f"data.batch_size={a.batch_size}",
        f"data.val_tokens={a.val_tokens}",
        f"data.device={'cuda' if a.device == 'cuda' else 'cpu'}",
        "data.progress=false",
    ]


def cache_overrides(a) -> list[str]:
    return [
        f"data.train_tokens={a.train_tokens}",
        f"data.shard_tokens={a.train_tokens}",
        f"data.cache_dir={a.root / 'cache'}",
    ]


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def phase_cache(a) -> dict:
    """Bare truncated forward vs the caching pass, on the same contexts: bare, cache, bare."""
    import torch
    from omegaconf import OmegaConf

    from saelab.data.activations import ActivationDataModule
    from saelab.data.cache import read_manifest
    from saelab.data.cache_build import CacheBuilder, LMSource
    from saelab.lm import corpus
    from saelab.lm.contexts import iter_token_batches, keep_mask
    from saelab.lm.sites import forward_until

    data = OmegaConf.to_object(_compose(a, cache_overrides(a)).data)
    source = LMSource(data.model, data.corpus, data.device, data.lm_batch_size, progress=False)
    t0 = time.perf_counter()
    builder = CacheBuilder(source, a.root / "cache")
    model, tok = builder.lm()
    load_seconds = time.perf_counter() - t0
    device = next(model.parameters()).device
    # The LM batches the train cache's pass runs, tokenized up front (not timed).
    batches, kept = [], 0
    docs = corpus.iter_documents(data.corpus, "train")
    for ids, mask in iter_token_batches(tok, docs, data.contexts, data.lm_batch_size):
        batches.append((torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device)))
        kept += int(keep_mask(ids, mask, tok).sum())
        if kept >= a.train_tokens:
            break

    def timed(run) -> tuple[float, float]:
        """(tokens per wall second, tokens per CPU second of this process)."""
        _sync(a.device)
        wall, cpu = time.perf_counter(), time.process_time()
        run()
        _sync(a.device)
        return (
            a.train_tokens / (time.perf_counter() - wall),
            a.train_tokens / (time.process_time() - cpu),
        )

    def bare() -> None:
        for ids, mask in batches:
            forward_until(model, ids, mask, [], stop_at=a.layer)

    train_spec, val_spec = ActivationDataModule(data).specs(source)
    folder = builder.folder(train_spec)

    def cache() -> None:
        shutil.rmtree(folder, ignore_errors=True)
        builder.ensure([train_spec])

    forward_until(model, *batches[0], [], stop_at=a.layer)  # warm-up: first-touch of weights
    builder.ensure([val_spec])  # what the training runs will validate on (not timed)
    # Interleaved rounds, best of each: other processes share this machine and their load
    # comes and goes; alternating keeps either side from getting only the quiet moments.
    rates = {"bare": [], "cache": []}
    for _ in range(a.rounds):
        rates["bare"].append(timed(bare))
        rates["cache"].append(timed(cache))
    manifest = read_manifest(folder)
    assert manifest["token_count"] == a.train_tokens, manifest["token_count"]
    return {
        "bare": rates["bare"],
        "cache": rates["cache"],
        "tokens": manifest["token_count"],
        "lm_batches": len(batches),
        "load_seconds": load_seconds,
    }


def phase_train(a) -> dict:
    """A JumpReLU SAE on the cache (``--data activations``) or on the stream, a few steps,
    through saelab's runner (train.py's code path on the composed config)."""
    from saelab.runner import train

    run = a.root / f"run-{a.data}-{a.width}"
    shutil.rmtree(run, ignore_errors=True)
    overrides = [
        f"sae.d_sae={a.width}",
        f"sae.normalization_tokens={a.batch_size}",
        f"trainer.max_steps={a.steps}",
        "trainer.val_check_interval=100000",
        "trainer.limit_val_batches=1",
        "trainer.enable_progress_bar=false",
        "trainer.log_every_n_steps=1",
        f"trainer.accelerator={'gpu' if a.device == 'cuda' else 'cpu'}",
        "eval_tokens=0",
        "checkpoint_every_n_steps=100000",
        "logger=tensorboard",
        f"output_dir={run}",
    ]
    if a.data == "stream":
        overrides += ["data=stream", f"data.buffer_tokens={2 * a.batch_size}"]
    else:
        overrides += cache_overrides(a)
    cfg = _compose(a, overrides)
    base_rss = _current_rss()  # the interpreter and its libraries, before any data or SAE
    t0 = time.perf_counter()
    metrics = train(cfg)
    seconds = time.perf_counter() - t0
    return {
        "step_tok_s": _step_rate(run, a.batch_size),
        "seconds": seconds,
        "sae_params": _safetensors_numel(run / "sae" / "sae_weights.safetensors"),
        "val_fvu": metrics.get("val/fvu"),
        "base_rss": base_rss,
    }


def _current_rss() -> int:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


def _step_rate(run: Path, batch_size: int) -> float:
    """Tokens/s between the first and the last logged training step (TensorBoard wall times)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard")).Reload().Scalars("train/loss")
    first, last = events[0], events[-1]
    if last.step == first.step:
        return float("nan")
    return (last.step - first.step) * batch_size / (last.wall_time - first.wall_time)


def _safetensors_numel(path: Path) -> int:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return sum(_numel(f, k) for k in f.keys())


def _numel(f, key: str) -> int:
    n = 1
    for size in f.get_slice(key).get_shape():
        n *= size
    return n


PHASES = {"make": phase_make, "cache": phase_cache, "train": phase_train}


def run_phase(a) -> None:
    import torch

    result = PHASES[a.phase](a)
    result["peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if a.device == "cuda":
        result["cuda_peak"] = torch.cuda.max_memory_allocated()
    print("RESULT " + json.dumps(result), flush=True)


# --- the driver -------------------------------------------------------------------------------
def spawn(a, phase: str, **extra) -> dict:
    """Run a phase in its own process; with --reuse, a phase whose result is saved in the
    scratch folder is not run again."""
    saved = a.root / "results" / ("-".join([phase, *map(str, extra.values())]) + ".json")
    if a.reuse and saved.is_file():
        print(f"  {phase} {extra or ''}: reused {saved}", file=sys.stderr)
        return json.loads(saved.read_text())
    args = [sys.executable, __file__, "--phase", phase]
    for key, value in {**vars(a), **extra}.items():
        if key in ("phase", "out", "reuse") or value is None:
            continue
        args += [f"--{key.replace('_', '-')}", str(value)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    proc = subprocess.run(args, env=env, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
        raise SystemExit(f"phase {phase} {extra} failed (exit code {proc.returncode})")
    result = json.loads(lines[-1][len("RESULT ") :])
    result["wall"] = time.perf_counter() - t0
    saved.parent.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps(result))
    print(f"  {phase} {extra or ''}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return result


def model_bytes(shape: dict) -> tuple[int, int]:
    """(parameters, bf16 bytes) of a Gemma 2 of this shape, counted on the meta device."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(gemma_config(shape))
    n = sum(p.numel() for p in model.parameters())
    return n, 2 * n


def jumprelu_params(d_in: int, d_sae: int) -> int:
    return 2 * d_in * d_sae + 2 * d_sae + d_in  # W_enc, W_dec, b_enc, threshold, b_dec


def gb(n: float) -> str:
    return f"{n / GIB:.2f} GiB"


def report(a, cache: dict, streams: dict[int, dict], trains: dict[int, dict]) -> str:
    shape = SHAPES[a.shape]
    weights = sum(p.stat().st_size for p in Path(a.folder).glob("*.safetensors"))
    best = {
        k: (max(r[0] for r in cache[k]), max(r[1] for r in cache[k])) for k in ("bare", "cache")
    }
    wall_ratio, cpu_ratio = (best["cache"][i] / best["bare"][i] for i in (0, 1))
    command = " ".join(["python", "bench/real_shapes.py", *sys.argv[1:]])
    threads = os.environ.get("OMP_NUM_THREADS")
    lines = [
        f"# command: {f'OMP_NUM_THREADS={threads} ' if threads else ''}{command}",
        f"# run {time.strftime('%Y-%m-%d %H:%M')} on {os.cpu_count()} CPU cores"
        + (" (shared with other jobs: wall-clock rates are noisy)" if a.device == "cpu" else ""),
        f"# bench/real_shapes.py: Gemma 2 shape {a.shape!r}, random bf16 weights, device "
        f"{a.device}, layer {a.layer} resid, context {a.context}, LM batch {a.lm_batch_size}",
        f"# model: {gb(weights)} of safetensors; tokenizer: the embedded tiny-gemma-2's",
        "",
        "| measurement | tokens/s (wall) | tokens per CPU-second | peak memory | limit (target) "
        "| met |",
        "|---|---|---|---|---|---|",
    ]

    def mem(result: dict) -> int:
        return result["cuda_peak"] if a.device == "cuda" else result["peak_rss"]

    lines.append(
        f"| bare forward to layer {a.layer} ({cache['tokens']:,} tokens, {cache['lm_batches']} "
        f"LM batches; best of {len(cache['bare'])}) | {best['bare'][0]:,.1f} | "
        f"{best['bare'][1]:,.1f} | | | |"
    )
    limit = weights + 2 * GIB
    met = min(wall_ratio, cpu_ratio) >= 0.9 and mem(cache) <= limit
    lines.append(
        f"| caching pass resid@{a.layer} (bf16 LM, float32 cache; best of {len(cache['cache'])})"
        f" | {best['cache'][0]:,.1f} ({100 * wall_ratio:.0f}% of bare) | {best['cache'][1]:,.1f}"
        f" ({100 * cpu_ratio:.0f}% of bare; target >= 90%) | {gb(mem(cache))} | weights + 2 GiB"
        f" = {gb(limit)} | {'yes' if met else 'NO'} |"
    )
    d_in = shape["hidden_size"]
    rows = [("stream", w, r, True) for w, r in streams.items()] + [
        ("cache", w, r, False) for w, r in trains.items()
    ]
    for data, width, result, with_lm in rows:
        state = 16 * result["sae_params"]
        limit = (weights if with_lm else 0) + state + 2 * GIB
        lines.append(
            f"| JumpReLU {width:,} latents on data={'stream' if data == 'stream' else 'activations'}"
            f", batch {a.batch_size}, {a.steps} steps | {result['step_tok_s']:,.1f} | | "
            f"{gb(mem(result))} | {'weights + ' if with_lm else ''}SAE state {gb(state)} + "
            f"2 GiB = {gb(limit)} | {'yes' if mem(result) <= limit else 'NO'} |"
        )
    lines += [
        "",
        "SAE state = 16 bytes per parameter (fp32 weights, gradients, Adam's two moments); "
        f"JumpReLU params = 2 d_in d_sae + 2 d_sae + d_in (d_in {d_in}).",
        "Peak memory: the phase process's peak RSS (getrusage ru_maxrss; resident pages, "
        "file-backed included)"
        + ("; on CUDA torch.cuda.max_memory_allocated." if a.device == "cuda" else "."),
        "",
        nine_b(a, trains),
    ]
    return "\n".join(lines)


def nine_b(a, trains: dict[int, dict]) -> str:
    """Memory arithmetic for Gemma 2 9B with a 131k-wide JumpReLU (not run)."""
    n, weights = model_bytes(GEMMA_2_9B)
    d_in, d_sae, batch, ctx, lm_batch = 3584, 131_072, 4096, 1024, 8
    params = jumprelu_params(d_in, d_sae)
    per_tensor = batch * d_sae * 4
    # [B, d_sae] float32 tensors alive at a JumpReLU step's peak (docs/speed.md measures 3.2
    # for the dense path); the widest run here gives its own estimate.
    widest = max(trains) if trains else None
    measured = None
    if widest is not None and 16 * trains[widest]["sae_params"] >= GIB:  # large enough to read
        result = trains[widest]
        extra = result["peak_rss"] - result["base_rss"] - 16 * result["sae_params"]
        measured = max(0.0, extra / (a.batch_size * widest * 4))
    k = 3.2
    heads, inter = GEMMA_2_9B["num_attention_heads"], GEMMA_2_9B["intermediate_size"]
    attention = lm_batch * heads * ctx * ctx * 4 * 3  # eager scores, soft-capped, softmaxed
    mlp = lm_batch * ctx * inter * 2 * 3  # gate, up and their product in bf16
    buffers = 2 * 65_536 * d_in * 4
    rows = [
        ("LM weights (bf16)", weights, f"{n / 1e9:.2f}B parameters x 2 B, counted on meta"),
        (
            "SAE parameters (fp32)",
            4 * params,
            f"{params / 1e6:.0f}M = 2 x {d_in} x {d_sae:,} + ...",
        ),
        ("SAE gradients (fp32)", 4 * params, ""),
        ("Adam moments (fp32, 2 per parameter)", 8 * params, ""),
        (
            f"SAE activations per batch of {batch:,}",
            k * per_tensor,
            f"{k} [B, d_sae] fp32 tensors of {gb(per_tensor)} (docs/speed.md, dense JumpReLU)"
            + (
                f"; the {widest:,}-wide run here held ~{measured:.1f} such tensors' worth above its"
                " SAE state (all its transients, Adam's [d_sae, d_in] temporaries included)"
                if measured is not None
                else ""
            ),
        ),
        (
            f"LM forward temporaries (stream; {lm_batch} x {ctx} tokens)",
            attention + mlp,
            "eager attention scores x3 fp32 + MLP x3 bf16, per layer, not kept",
        ),
        ("stream shuffle buffers (2 x 65,536 rows fp32)", buffers, "data.buffer_tokens"),
    ]
    total_cache = sum(r[1] for r in rows[1:5])
    total_stream = sum(r[1] for r in rows)
    out = [
        "Gemma 2 9B, resid (d_in 3,584), JumpReLU at 131,072 latents, batch 4,096 (arithmetic):",
        "",
        "| item | memory | how |",
        "|---|---|---|",
        *[f"| {name} | {gb(v)} | {how} |" for name, v, how in rows],
        f"| total, training from a cache (no LM) | {gb(total_cache)} | |",
        f"| total, data=stream (LM + SAE on one device) | {gb(total_stream)} | |",
    ]
    return "\n".join(out)


def _widths(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", choices=sorted(SHAPES), default="gemma-2-2b")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--layer", type=int, default=12)
    p.add_argument("--context", type=int, default=1024)
    p.add_argument("--lm-batch-size", type=int, default=1)
    p.add_argument("--train-tokens", type=int, default=3072, help="cached, and bare-timed")
    p.add_argument("--val-tokens", type=int, default=1024)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2, help="interleaved bare/cache rounds")
    p.add_argument("--widths", default="16384,65536", help="SAE widths trained on the cache")
    p.add_argument("--stream-widths", default="16384,65536", help="SAE widths on data=stream")
    p.add_argument("--folder", help="model folder (default ~/.cache/saelab/bench/<shape>-random)")
    p.add_argument("--root", help="scratch folder for caches and runs (default: a temp dir)")
    p.add_argument("--out", help="also write the table to this file")
    p.add_argument(
        "--reuse", action="store_true", help="reuse phase results saved in --root by a former run"
    )
    p.add_argument("--phase", choices=sorted(PHASES), help=argparse.SUPPRESS)
    p.add_argument("--data", default="activations", help=argparse.SUPPRESS)
    p.add_argument("--width", type=int, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: torch.cuda.is_available() is False on this machine")
    a.folder = str(
        Path(a.folder or f"~/.cache/saelab/bench/{a.shape}-random").expanduser().resolve()
    )
    if a.phase:
        a.root = Path(a.root)
        run_phase(a)
        return
    a.root = Path(a.root or tempfile.mkdtemp(prefix="saelab-real-shapes-"))
    print(f"model folder {a.folder}; scratch {a.root}", file=sys.stderr)
    spawn(a, "make")
    cache = spawn(a, "cache")
    streams = {w: spawn(a, "train", data="stream", width=w) for w in _widths(a.stream_widths)}
    trains = {w: spawn(a, "train", data="activations", width=w) for w in _widths(a.widths)}
    table = report(a, cache, streams, trains)
    print(table)
    if a.out:
        Path(a.out).write_text(table + "\n")


if __name__ == "__main__":
    main()
