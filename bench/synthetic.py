"""Train every SAE family on the default synthetic problem at a matched L0 and print a table.

The data (conf/data/synthetic.yaml): 512 true unit features in 64 dimensions (8x superposition),
8 active per token on average. Each family gets the same width, batch, steps and evaluation; the
per-family knobs below set its L0 to the true L0 of 8 (TopK/BatchTopK: k = 8; JumpReLU: its
target-L0 mode; Gated and ReLU: an L1 coefficient found by a sweep).

    python bench/synthetic.py                      # all families, ~2-3 min each on 1 CPU core
    python bench/synthetic.py --families jumprelu topk --steps 2000

Runs through the real Hydra configs and saelab.runner.train, exactly like train.py.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHARED = [
    "data=synthetic",
    "logger=none",
    "++trainer.enable_progress_bar=false",
    "++trainer.enable_model_summary=false",
    "trainer.val_check_interval=1000000",
    "data.batch_size=1024",
    "sae.expansion_factor=8",
    "sae.normalization_tokens=100000",
]
# Knobs that bring each family to L0 ~ 8 on this problem (Gated and ReLU: L1 coefficients found
# by a short sweep). `jumprelu` is saelab's recipe (conf/sae/jumprelu.yaml) asked for L0 = 8.
# `jumprelu-paper` is the paper's recipe (threshold init and bandwidth 1e-3, no AuxK, beta1 0)
# with the quadratic target penalty: tuned for billions of LM tokens, with a few million its
# thresholds cannot travel to the ~0.1-0.2 this data needs, and latents that fall below threshold
# before learning a feature get no gradient again.
FAMILIES = {
    "jumprelu": ["sae=jumprelu", "sae.lr=3e-3", "sae.target_l0=8"],
    "jumprelu-paper": [
        "sae=jumprelu_paper",
        "sae.lr=3e-3",
        "sae.target_l0=8",
        "sae.experimental.target_l0_method=quadratic",
        "sae.experimental.quadratic_coefficient=1",
    ],
    "topk": ["sae=topk", "sae.k=8", "sae.lr=3e-3"],
    "batchtopk": ["sae=batchtopk", "sae.k=8", "sae.lr=3e-3"],
    "gated": ["sae=gated", "sae.lr=1e-3", "sae.l1_coefficient=0.5"],
    "relu": ["sae=relu", "sae.lr=1e-3", "sae.l1_coefficient=0.45"],
}
COLUMNS = ["family", "L0", "FVU", "MMCS", "recovered", "dead", "steps", "seconds"]


def run(family: str, steps: int, extra: list[str]) -> dict:
    from saelab.runner import train
    from tests.conftest import compose_config

    overrides = [*SHARED, *FAMILIES[family], f"trainer.max_steps={steps}", *extra]
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        metrics = train(compose_config(overrides, out))
    return {
        "family": family,
        "L0": metrics["val/l0"],
        "FVU": metrics["val/fvu"],
        "MMCS": metrics["val/mmcs"],
        "recovered": metrics["val/recovered_fraction"],
        "dead": metrics["val/dead_fraction"],
        "steps": int(metrics["steps"]),
        "seconds": time.perf_counter() - start,
    }


def print_table(rows: list[dict]) -> None:
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    for r in rows:
        cells = [
            r["family"],
            f"{r['L0']:.2f}",
            f"{r['FVU']:.3f}",
            f"{r['MMCS']:.3f}",
            f"{r['recovered']:.1%}",
            f"{r['dead']:.1%}",
            str(r["steps"]),
            f"{r['seconds']:.0f}",
        ]
        print("| " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    args = parser.parse_args()
    rows = []
    for family in args.families:
        rows.append(run(family, args.steps, args.overrides))
        print(f"done: {family}", file=sys.stderr)
    print_table(rows)


if __name__ == "__main__":
    main()
