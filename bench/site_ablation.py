"""What zero-ablating a site costs the LM, layer by layer: the denominator of CE loss recovered.

CE loss recovered = (H_zero - H_spliced) / (H_zero - H_clean) (docs/maths.md §6.3) only means
something where H_zero - H_clean is well above noise. This prints that cost for every layer of
a site, on the held-out tokens a run's evaluation reads, so you can see where the ratio is
meaningful before choosing a layer.

    python bench/site_ablation.py                              # tiny-gemma-2, site=mlp
    python bench/site_ablation.py site=attn                    # any train.py override
    python bench/site_ablation.py model.name_or_path=/models/my-llama --tokens 32768
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from saelab.config import register_configs  # noqa: E402
from saelab.lm.contexts import iter_token_batches, keep_mask, special_ids  # noqa: E402
from saelab.lm.corpus import iter_documents  # noqa: E402
from saelab.lm.load import load_lm  # noqa: E402
from saelab.lm.sites import SitePoint  # noqa: E402
from saelab.lm.splice import spliced_losses  # noqa: E402


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="train.py overrides (default: site=mlp)")
    parser.add_argument(
        "--tokens", type=int, default=16_384, help="held-out tokens, as eval_tokens"
    )
    args = parser.parse_args(argv)
    register_configs()
    overrides = args.overrides or ["site=mlp"]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        # Every layer is measured; layer=0 only gets the config past the range check.
        cfg = compose(config_name="config", overrides=["layer=0", *overrides, "output_dir=unused"])
    data = OmegaConf.to_object(cfg.data)
    model, tokenizer = load_lm(data.model, "cpu")
    drop = [i for i in special_ids(tokenizer).values() if i is not None]
    batches, tokens = [], 0
    texts = iter_documents(data.corpus, "validation")
    context = data.context_length or data.model.context_length
    # The contexts a run's evaluation of --tokens kept tokens reads (saelab/evaluation.py), so
    # the cost at a run's layer is the one its summary prints.
    for ids, mask in iter_token_batches(tokenizer, texts, context, 8, data.model.prepend_bos):
        batches.append((torch.from_numpy(ids), torch.from_numpy(mask)))
        tokens += int(keep_mask(ids, mask, tokenizer).sum())
        if tokens >= args.tokens:
            break
    n_layers = len(model.model.layers)
    print(
        f"{data.model.name_or_path}, site {data.site}, the contexts of {args.tokens:,} held-out tokens"
    )
    print("| layer | clean CE (nats) | zero-ablation cost (nats) |")
    print("|---|---|---|")
    for layer in range(n_layers):
        point = SitePoint(data.site, layer)
        clean = zero = weight = 0.0
        for ids, mask in batches:
            out = spliced_losses(model, point, lambda a: a, ids, mask, drop)
            n = float((mask[:, :-1].bool() & mask[:, 1:].bool()).sum())  # valid targets
            clean += float(out["ce_clean"]) * n
            zero += float(out["ce_zero_ablation"]) * n
            weight += n
        print(f"| {layer} | {clean / weight:.3f} | {(zero - clean) / weight:.4f} |", flush=True)


if __name__ == "__main__":
    main()
