"""Evaluate a trained SAE on held-out text and write eval.json beside it.

    python evaluate.py outputs/<date>/<time>              # a run folder of train.py
    python evaluate.py path/to/sae --site mlp --layer 20  # an SAE folder or Gemma Scope .npz

Reports L0, FVU, dead / dense fractions, relative reconstruction bias, and, with the
reconstruction spliced into the model at the site, delta LM loss, CE loss recovered and KL.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from saelab.data.corpus import iter_documents
from saelab.evaluation import evaluate_sae
from saelab.lm.load import load_model, load_tokenizer
from saelab.lm.sites import SitePoint
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
    data_cfg = run_cfg.get("data", {})
    if run_cfg and "site" not in data_cfg:
        parser.error(f"{args.path} was trained on {run_cfg.get('data', {})!r}-style data, not LM activations")
    model_cfg = data_cfg.get("model") or run_cfg.get("model") or {}
    model_name = args.model or model_cfg.get("name_or_path", "tiny-gemma-2")
    site, layer = args.site or data_cfg.get("site"), args.layer if args.layer is not None else data_cfg.get("layer")
    if site is None or layer is None:
        parser.error("give --site and --layer (the SAE folder does not say where it was trained)")
    context = args.context_length or data_cfg.get("context_length") or model_cfg.get("context_length") or 256

    sae = load_sae(sae_path)
    model = load_model(model_name, trust_remote_code=bool(model_cfg.get("trust_remote_code", False)))
    tokenizer = load_tokenizer(model_name)
    results = evaluate_sae(sae, model, tokenizer, SitePoint(site, int(layer)),
                           iter_documents(data_cfg.get("corpus"), "validation"),
                           context_length=int(context), n_tokens=args.tokens,
                           prepend_bos=bool(model_cfg.get("prepend_bos", True)))
    results.update(model=model_name, site=site, layer=int(layer), sae=str(sae_path))
    out = (args.path if args.path.is_dir() else args.path.parent) / "eval.json"
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2))
    os.replace(tmp, out)
    print(json.dumps(results, indent=2))
    print(f"written: {out}")


if __name__ == "__main__":
    main()
