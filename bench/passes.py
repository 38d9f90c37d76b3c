"""How the number of passes over a cache shows in the held-out figures: the main job
(``python train.py``: 2,000 steps of 4,096 tokens) with caches of several sizes.

For each ``data.train_tokens`` it runs ``python train.py data.train_tokens=T`` (its own process,
or reads the run folder given with ``--runs``), then scores the exported SAE with saelab's own
L0 and FVU metrics on two sets of rows: 16,384 rows spread over the run's training
cache (rows it trained on, each as often as the others) and the validation rows (held out, the
ones the run's summary reports). An SAE that fits what it revisits shows it as a gap between
the two. Usage:

    python bench/passes.py                                   # 524,288, 1,048,576 and 2,097,152
    python bench/passes.py --train-tokens 2097152 --runs outputs/<date>/<time>
    python bench/passes.py --train-tokens 2097152 layer=6 sae.d_sae=4096   # any train.py overrides

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


def spread_rows(cache) -> torch.Tensor:
    """SAMPLE_ROWS rows in 16 blocks spread evenly over the cache: its shards follow the
    corpus's files, so its first rows would be a few modules, not the training data."""
    block = SAMPLE_ROWS // 16
    starts = torch.linspace(0, len(cache) - block, 16).long().tolist()
    return torch.cat([cache.read(s, s + block) for s in starts])


def measure(run: Path, train_tokens: int, extra: list[str]) -> dict:
    cfg = compose_config([*extra, f"data.train_tokens={train_tokens}"], run)
    data = OmegaConf.to_object(cfg.data).build()
    data.prepare_data()
    held_out = torch.cat(list(data.val_dataloader()))
    sae = load_sae(run / "sae")
    metrics = json.loads((run / "metrics.json").read_text())
    passes = metrics["train_tokens"] / len(data.train_cache)
    train_l0, train_fvu = score(sae, spread_rows(data.train_cache))
    val_l0, val_fvu = score(sae, held_out)
    return {
        "train_tokens": train_tokens,
        "passes": passes,
        "train_l0": train_l0,
        "train_fvu": train_fvu,
        "val_l0": val_l0,
        "val_fvu": val_fvu,
        "delta_lm_loss": metrics.get("eval/delta_lm_loss"),
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
    print(
        "| data.train_tokens | passes | training rows: L0 / FVU | held out: L0 / FVU | "
        "delta LM loss | s/run |"
    )
    print("|---|---|---|---|---|---|")
    for i, tokens in enumerate(args.train_tokens):
        if args.runs is not None:
            run, seconds = Path(args.runs[i]), None
        else:
            run = Path(args.out) / f"train_tokens_{tokens}"
            seconds = train(run, tokens, args.overrides)
        r = measure(run, tokens, args.overrides)
        took = "-" if seconds is None else f"{seconds:.0f}"
        print(
            f"| {tokens:,} | {r['passes']:.1f} | {r['train_l0']:.1f} / {r['train_fvu']:.4f} | "
            f"{r['val_l0']:.1f} / {r['val_fvu']:.4f} | {r['delta_lm_loss']:.4f} | {took} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
