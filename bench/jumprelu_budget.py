"""JumpReLU on small token budgets (issue 9): the paper's recipe, saelab's default and each of
its options one at a time, against TopK, at one width and several token budgets.

tiny-gemma-2 residual stream at layer 12 (the default cache), width 1024, batch 4096, the same
requested L0 for every run, and the same held-out evaluation with the SAE spliced into the LM:

    python bench/jumprelu_budget.py                          # 0.5M, 2M, 8M tokens; ~30 min, 1 core
    python bench/jumprelu_budget.py --budgets 2e6 --variants small topk --l0 32

Runs through the real Hydra configs and saelab.runner.train, exactly like train.py. Note the
default cache holds 524,288 training tokens, so budgets above that revisit it (8M = 16 passes).
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
    "logger=none", "++trainer.enable_progress_bar=false", "++trainer.enable_model_summary=false",
    "data.progress=false", "export=false", "sae.expansion_factor=8",
]
# {L0} is replaced by the requested L0. `small` is saelab's small-budget JumpReLU (the recipe of
# the paper_pareto experiment); each `small-*` row changes one knob of it; `paper` is the paper's
# recipe (conf/sae/jumprelu_paper.yaml), which has no L0 target: it lands where its lambda puts it.
SMALL = ["sae=jumprelu", "sae.target_l0={L0}", "sae.l0_coefficient=1", "sae.threshold_init_l0={L0}",
         "sae.bandwidth=0.05", "sae.aux_coefficient=1", "sae.dead_tokens_window=100000", "sae.lr=1e-3"]
VARIANTS = {
    "paper": ["sae=jumprelu_paper"],
    "small": SMALL,
    "small-silverman": [*SMALL, "sae.bandwidth_rule=silverman"],
    "small-theta-0.1": [*SMALL, "sae.threshold_init_l0=null", "sae.threshold_init=0.1"],
    "small-no-auxk": [*SMALL, "sae.aux_coefficient=0"],
    "topk": ["sae=topk", "sae.k={L0}", "sae.lr=1e-3"],
}
DEFAULT_VARIANTS = ["paper", "small", "small-silverman", "small-theta-0.1", "topk"]
COLUMNS = ["variant", "tokens", "steps", "L0", "FVU", "delta LM loss", "CE recovered", "dead", "seconds"]


def run(variant: str, tokens: float, l0: int, batch: int, eval_tokens: int, extra: list[str]) -> dict:
    from saelab.runner import train
    from tests.conftest import compose_config

    steps = max(1, round(tokens / batch))
    overrides = [*SHARED, *(o.replace("{L0}", str(l0)) for o in VARIANTS[variant]),
                 f"data.batch_size={batch}", f"eval_tokens={eval_tokens}", f"trainer.max_steps={steps}", f"trainer.val_check_interval={steps}",
                 *extra]
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        m = train(compose_config(overrides, out))
    return {"variant": variant, "tokens": steps * batch, "steps": steps, "L0": m["eval/l0"], "FVU": m["eval/fvu"],
            "delta LM loss": m["eval/delta_lm_loss"], "CE recovered": m["eval/ce_loss_recovered"],
            "dead": m["eval/dead_fraction"], "seconds": time.perf_counter() - start}


def print_header() -> None:
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS), flush=True)


def print_row(r: dict) -> None:
    cells = [r["variant"], f"{r['tokens'] / 1e6:.1f}M", str(r["steps"]), f"{r['L0']:.1f}", f"{r['FVU']:.3f}",
             f"{r['delta LM loss']:.3f}", f"{r['CE recovered']:.3f}", f"{r['dead']:.1%}", f"{r['seconds']:.0f}"]
    print("| " + " | ".join(cells) + " |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, choices=list(VARIANTS))
    parser.add_argument("--budgets", nargs="+", type=float, default=[5e5, 2e6, 8e6], help="training tokens")
    parser.add_argument("--l0", type=int, default=16, help="the L0 every run asks for")
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--eval-tokens", type=int, default=8192, help="held-out tokens per evaluation")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    args = parser.parse_args()
    print_header()  # rows print as they finish, so a long run shows progress
    for tokens in args.budgets:
        for variant in args.variants:
            print_row(run(variant, tokens, args.l0, args.batch, args.eval_tokens, args.overrides))


if __name__ == "__main__":
    main()
