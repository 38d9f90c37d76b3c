"""Evaluate a trained SAE on held-out text and write eval.json beside it.

    python evaluate.py outputs/<date>/<time>              # a run folder of train.py
    python evaluate.py path/to/sae --site mlp --layer 20  # an SAE folder or Gemma Scope .npz

A model's own code (auto_map) runs only with --trust-remote-code, never because a run folder's
config.json asks for it.

Reports L0, FVU, dead / dense fractions, relative reconstruction bias, and, with the
reconstruction spliced into the model at the site, delta LM loss, CE loss recovered and KL.
"""

from __future__ import annotations

import argparse
import json

from saelab.evaluation import evaluate_on_validation, strict
from saelab.sae import load_sae
from saelab.targets import add_target_arguments, target_from_args


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_target_arguments(parser)
    parser.add_argument("--tokens", type=int, default=16_384, help="held-out tokens to evaluate")
    args = parser.parse_args()
    try:
        target = target_from_args(args)  # validates site, layer range, sizes
    except (ValueError, FileNotFoundError) as error:
        parser.error(str(error))
    results = evaluate_on_validation(
        load_sae(target.sae_path),
        target.data_cfg,
        args.tokens,
        output_dir=target.home,
        extra={"sae": str(target.sae_path)},
    )
    print(json.dumps(strict(results), indent=2))
    print(f"written: {target.home / 'eval.json'} and {target.home / 'feature_density.png'}")


if __name__ == "__main__":
    main()
