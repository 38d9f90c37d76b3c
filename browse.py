"""Write a feature browser for a trained SAE: a static folder that opens offline (file://).

    python browse.py outputs/<date>/<time>                    # a run folder of train.py
    python browse.py path/to/sae --site mlp --layer 20        # an SAE folder or Gemma Scope .npz
    python browse.py outputs/<date>/<time> --tokens 32768 --top-k 30 --out /tmp/browser

Scans held-out text (the corpus's validation split) with the SAE at its site and writes, per
latent, density, an activation histogram, top-activating contexts (shaded by the latent's
activation) and, for resid and mlp sites, the output tokens its decoder direction promotes and
suppresses. Open <out>/index.html in a browser. See docs/browser.md. A model's own code
(auto_map) runs only with --trust-remote-code, never because a run folder's config.json asks.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from saelab.browser import build_browser
from saelab.targets import add_target_arguments, target_from_args


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_target_arguments(parser)
    parser.add_argument(
        "--tokens", type=int, default=65_536, help="held-out tokens to scan (at most the split)"
    )
    parser.add_argument(
        "--top-k", type=int, default=20, help="top-activating contexts kept per latent"
    )
    parser.add_argument(
        "--context", type=int, default=10, help="tokens shown on each side of a top token"
    )
    parser.add_argument("--out", type=Path, help="output folder (default: <run>/browser)")
    parser.add_argument(
        "--no-logits", action="store_true", help="skip the promoted/suppressed output tokens"
    )
    parser.add_argument("--lm-batch-size", type=int, default=8, help="contexts per LM forward")
    args = parser.parse_args()

    try:
        target = target_from_args(args)
    except (ValueError, FileNotFoundError) as e:
        parser.error(str(e))
    result = build_browser(
        target,
        args.out,
        n_tokens=args.tokens,
        top_k=args.top_k,
        context=args.context,
        logits=not args.no_logits,
        lm_batch_size=args.lm_batch_size,
    )
    s = result["summary"]
    print(
        f"scanned {result['tokens']:,} tokens, {result['d_sae']:,} latents "
        f"({s['dead']} dead, {s['dense_10pct']} above 10% density) in {result['seconds']:.1f} s"
    )
    print(f"written: {Path(result['out']) / 'index.html'}")


if __name__ == "__main__":
    main()
