"""How the number of passes over a cache shows in the held-out figures: the main job
(``python train.py``: 2,000 steps of 4,096 tokens) with caches of several sizes.

For each ``data.train_tokens`` it runs ``python train.py data.train_tokens=T`` (its own process,
or reads the run folder given with ``--runs``), then scores the exported SAE with saelab's own
L0 and FVU metrics on two sets of rows: 16,384 rows spread over the run's training
cache (rows it trained on, each as often as the others) and the validation rows (held out, the
ones the run's summary reports). An SAE that fits what it revisits shows it as a gap between
the two. With ``--unseen-tokens N`` it also scores rows of the same split that the run never
read: the cache of N tokens of that split holds the run's cache's shards first (the builder
fills shards in corpus order) and then new ones, whose rows are the training text's own
distribution without the repetition. Unseen rows that score like the training rows make the
gap a difference between the two splits' texts; unseen rows that score like the held-out ones,
or worse, show an SAE fitted to the rows it revisits. Usage:

    python bench/passes.py                                   # 524,288, 1,048,576 and 2,097,152
    python bench/passes.py --train-tokens 2097152 --runs outputs/<date>/<time>
    python bench/passes.py --train-tokens 2097152 layer=6 sae.d_sae=4096   # any train.py overrides
    python bench/passes.py --train-tokens 1048576 --unseen-tokens 3000320 --runs <run folder>

Results and what they mean: docs/activation-cache.md#how-many-passes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from saelab.evaluation import output  # noqa: E402
from saelab.metrics import FVU, L0  # noqa: E402
from saelab.sae import load_sae  # noqa: E402
from tests.conftest import compose_config  # noqa: E402

SAMPLE_ROWS = 16_384


def train(out: Path, train_tokens: int, extra: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "train.py"),
            *extra,
            f"data.train_tokens={train_tokens}",
            f"hydra.run.dir={out}",
            "data.progress=false",
        ],
        check=True,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


def score(sae, rows: torch.Tensor) -> tuple[float, float]:
    l0, fvu = L0(), FVU(sae.d_in)
    with torch.no_grad():
        for chunk in rows.split(4096):
            f, written, target = output(sae, chunk)
            l0.update(f)
            fvu.update(target, written)
    return float(l0.compute()), float(fvu.compute())


def spread_rows(cache, start: int = 0, rows: int = SAMPLE_ROWS, blocks: int = 16) -> torch.Tensor:
    """``rows`` rows in ``blocks`` blocks spread evenly over the cache's rows from ``start`` on:
    its shards follow the corpus's files, so its first rows would be a few modules, not the
    training data."""
    block = rows // blocks
    starts = torch.linspace(start, len(cache) - block, blocks).long().tolist()
    return torch.cat([cache.read(s, s + block) for s in starts])


def data_module(run: Path, train_tokens: int, extra: list[str]):
    """The run's data module (its training cache built if absent)."""
    cfg = compose_config([*extra, f"data.train_tokens={train_tokens}"], run)
    data = OmegaConf.to_object(cfg.data).build()
    data.prepare_data()
    return data


def unseen_rows(seen, larger, rows: int = SAMPLE_ROWS, blocks: int = 32) -> torch.Tensor:
    """``rows`` rows, in ``blocks`` blocks, spread over the shards of ``larger`` past those of
    ``seen`` (the run's cache). The shard that ends ``seen`` may be partial, and its counterpart
    in ``larger`` holds more rows shuffled differently, so it is skipped too."""
    first = rows // blocks
    if not torch.equal(seen.read(0, first), larger.read(0, first)):
        raise SystemExit(
            "--unseen-tokens: the larger cache does not start with the run's cache (another "
            "corpus, model or shuffle_seed?); give the run's own overrides"
        )
    start = int(larger.offsets[len(seen.offsets) - 1])
    if len(larger) - start < rows:
        raise SystemExit(
            f"--unseen-tokens: the larger cache holds {len(larger):,} rows, {len(larger) - start:,} "
            f"past the run's {len(seen):,} (whole shards); it needs {rows:,}: ask for "
            "more tokens (the corpus may hold fewer than asked: the build says so)"
        )
    return spread_rows(larger, start, rows, blocks)


def measure(
    run: Path, train_tokens: int, extra: list[str], unseen_tokens: int | None = None
) -> dict:
    data = data_module(run, train_tokens, extra)
    held_out = torch.cat(list(data.val_dataloader()))
    sae = load_sae(run / "sae")
    metrics = json.loads((run / "metrics.json").read_text())
    passes = metrics["train_tokens"] / len(data.train_cache)
    train_l0, train_fvu = score(sae, spread_rows(data.train_cache))
    val_l0, val_fvu = score(sae, held_out)
    unseen = {}
    if unseen_tokens is not None:
        larger = data_module(run, unseen_tokens, extra).train_cache
        unseen_l0, unseen_fvu = score(sae, unseen_rows(data.train_cache, larger))
        unseen = {"unseen_l0": unseen_l0, "unseen_fvu": unseen_fvu}
    return {
        "train_tokens": train_tokens,
        "passes": passes,
        "train_l0": train_l0,
        "train_fvu": train_fvu,
        "val_l0": val_l0,
        "val_fvu": val_fvu,
        "delta_lm_loss": metrics.get("eval/delta_lm_loss"),
        **unseen,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The bench's options and train.py's overrides. Overrides (key=value) are taken out first:
    argparse would otherwise read one that follows --train-tokens or --runs as a value of it."""
    argv = sys.argv[1:] if argv is None else argv
    overrides = [a for a in argv if "=" in a and not a.startswith("-")]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--train-tokens", type=int, nargs="+", default=[524_288, 1_048_576, 2_097_152]
    )
    parser.add_argument(
        "--runs", nargs="*", default=None, help="existing run folders, one per --train-tokens"
    )
    parser.add_argument(
        "--unseen-tokens",
        type=int,
        default=None,
        help="also score rows of the training split past the run's cache, from a cache of this "
        "many tokens of it (built if absent)",
    )
    parser.add_argument("--out", default="outputs/passes", help="where new runs are written")
    parser.add_argument(
        "overrides", nargs="*", help="train.py overrides for every run (default: the main job)"
    )
    args = parser.parse_args([a for a in argv if a not in overrides])
    args.overrides = [*overrides, *args.overrides]
    if args.runs is not None and len(args.runs) != len(args.train_tokens):
        parser.error("--runs takes one run folder per --train-tokens value")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    unseen = args.unseen_tokens is not None
    print(
        "| data.train_tokens | passes | training rows: L0 / FVU | "
        + ("unseen training-split rows: L0 / FVU | " if unseen else "")
        + "held out: L0 / FVU | delta LM loss | s/run |"
    )
    print("|---" * (7 if unseen else 6) + "|")
    for i, tokens in enumerate(args.train_tokens):
        if args.runs is not None:
            run, seconds = Path(args.runs[i]), None
        else:
            run = Path(args.out) / f"train_tokens_{tokens}"
            seconds = train(run, tokens, args.overrides)
        r = measure(run, tokens, args.overrides, args.unseen_tokens)
        took = "-" if seconds is None else f"{seconds:.0f}"
        middle = f"{r['unseen_l0']:.1f} / {r['unseen_fvu']:.4f} | " if unseen else ""
        print(
            f"| {tokens:,} | {r['passes']:.1f} | {r['train_l0']:.1f} / {r['train_fvu']:.4f} | "
            f"{middle}{r['val_l0']:.1f} / {r['val_fvu']:.4f} | {r['delta_lm_loss']:.4f} | "
            f"{took} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
