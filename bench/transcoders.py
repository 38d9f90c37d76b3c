"""Transcoders vs skip-transcoders vs an SAE on the MLP's output, at equal L0 and tokens.

Each row is one real ``python train.py`` run (its own process), on the embedded tiny-gemma-2 at
one layer, with the main job's budgets; the figures are that run's held-out evaluation
(eval.json): FVU of the MLP's output and the LM's loss with the dictionary's output in place of
the MLP's. A transcoder reads the MLP's input; the SAE reads the very output it writes, so it
has the easier job and is the reference the transcoders approach.

    python bench/transcoders.py                      # layer 12, JumpReLU and TopK
    python bench/transcoders.py layer=6 --families topk
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {
    "transcoder": ["site=transcoder"],
    "skip transcoder": ["site=transcoder", "sae.skip_connection=true"],
    "SAE on MLP output": ["site=mlp"],
}


def run(out: Path, overrides: list[str]) -> tuple[dict, float]:
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *overrides, f"output_dir={out}", "logger=none"],
        check=True,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
    )
    return json.loads((out / "eval.json").read_text()), time.perf_counter() - start


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="train.py overrides for every run")
    parser.add_argument("--families", default="jumprelu,topk")
    parser.add_argument(
        "--variants", default=",".join(VARIANTS), help="a comma-separated subset of the rows"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench_transcoders")
    args = parser.parse_args(argv)
    print(f"train.py {' '.join(args.overrides) or '(defaults)'}; each row one run, held-out eval")
    header = "| family | dictionary | L0 | FVU (MLP out) | delta LM loss | KL | dead | seconds |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for family in args.families.split(","):
        for name in args.variants.split(","):
            extra = VARIANTS[name]
            folder = args.out / f"{family}-{name.replace(' ', '_')}"
            result, seconds = run(folder, [f"sae={family}", *extra, *args.overrides])
            print(
                f"| {family} | {name} | {result['l0']:.1f} | {result['fvu']:.4f} | "
                f"{result['delta_lm_loss']:.4f} | {result['kl_div']:.4f} | "
                f"{100 * result['dead_fraction']:.1f}% | {seconds:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
