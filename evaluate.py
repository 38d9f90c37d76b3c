"""Evaluate a trained SAE on held-out text and write eval.json beside it.

    python evaluate.py outputs/<date>/<time>              # a run folder of train.py
    python evaluate.py path/to/sae --site mlp --layer 20  # an SAE folder or Gemma Scope .npz

Reports L0, FVU, dead / dense fractions, relative reconstruction bias, and, with the
reconstruction spliced into the model at the site, delta LM loss, CE loss recovered and KL.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from saelab.data.activations import ActivationsDataConfig
from saelab.evaluation import evaluate_on_validation
from saelab.sae import load_sae


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", type=Path, help="run folder (with config.json and sae/) or SAE folder / .npz")
    parser.add_argument("--model", help="model name or path (default: the run's, else tiny-gemma-2)")
    parser.add_argument("--site", help="resid | mlp | attn (default: the run's)")
    parser.add_argument("--layer", type=int, help="layer (default: the run's)")
    parser.add_argument("--tokens", type=int, default=16_384, help="held-out tokens to evaluate")
    parser.add_argument("--context-length", type=int, help="default: the run's, else the model config's 256")
    args = parser.parse_args()

    run_cfg = json.loads((args.path / "config.json").read_text()) if (args.path / "config.json").is_file() else {}
    sae_path = args.path / "sae" if (args.path / "sae").is_dir() else args.path
    if run_cfg and "site" not in run_cfg.get("data", {}):
        parser.error(f"{args.path} was not trained on LM activations (data={run_cfg.get('data')!r})")
    data = dict(run_cfg.get("data", {}))
    if args.model:
        data["model"] = {**(data.get("model") or {}), "name_or_path": args.model}
    data.update({k: v for k, v in {"site": args.site, "layer": args.layer,
                                  "context_length": args.context_length}.items() if v is not None})
    if "site" not in data or "layer" not in data:
        parser.error("give --site and --layer (an SAE folder does not say where it was trained)")
    data_cfg = ActivationsDataConfig(**data)  # validates site, layer range, sizes
    out = args.path if args.path.is_dir() else args.path.parent
    results = evaluate_on_validation(load_sae(sae_path), data_cfg, args.tokens, output_dir=out,
                                     extra={"sae": str(sae_path)})
    print(json.dumps(results, indent=2))
    print(f"written: {out / 'eval.json'} and {out / 'feature_density.png'}")


if __name__ == "__main__":
    main()
