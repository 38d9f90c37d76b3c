"""How well can each selection rule read the TRUE dictionary? A check that needs no training.

For a synthetic cell of bench/robustness.py, take the generator's own feature directions as both
decoder and encoder (W_dec = features, W_enc = features^T, no biases) and encode tokens with:

    true support      the features that are really active (an oracle: the floor any rule can reach)
    TopK              each token's k largest pre-activations, k = the true L0 rounded
    per-latent theta  JumpReLU's rule: latent i fires when z_i > theta_i, with theta_i the
                      quantile that makes it fire exactly as often as feature i really does

and print FVU (the unit of docs/maths.md §6.1) for each.

With --train-encoder, the encoder is learnt instead: saelab trains a JumpReLU (target L0 = true L0)
and a TopK (k = true L0) SAE with d_sae = n_features and the decoder frozen at the true features
(the bench's optimiser settings, --tokens-train tokens), and prints validation FVU and L0. If
JumpReLU's loss cannot get as low with the true dictionary as TopK's can, or as low as a JumpReLU
SAE trained from scratch gets elsewhere, its objective does not reward finding the true features
on that problem (docs/robustness.md).

    python bench/readout.py                         # syn-iid and syn-plc
    python bench/readout.py --d-in 64 128 256       # the same problems at other widths d_in
    python bench/readout.py --train-encoder         # learnt encoders on the true decoder
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from bench.robustness import CELLS  # noqa: E402
from saelab.data.synthetic import SyntheticFeatures  # noqa: E402
from tests.conftest import compose_config  # noqa: E402


def fvu(x: torch.Tensor, f: torch.Tensor, W: torch.Tensor) -> float:
    residual = (f @ W - x).pow(2).sum(-1).mean()
    return float(residual / (x - x.mean(0)).pow(2).sum(-1).mean())


def readouts(features: SyntheticFeatures, tokens: int, seed: int) -> dict[str, float]:
    x, coeffs = features.sample(tokens, torch.Generator().manual_seed(seed))
    W = features.features
    z = x @ W.T
    active = coeffs > 0
    k = max(1, round(float(active.sum(-1).float().mean())))
    values, index = z.topk(k, dim=-1)
    topk = torch.zeros_like(z).scatter(-1, index, values.clamp_min(0))
    # Each latent's threshold at the (1 - p_i) quantile of its own pre-activations.
    rate = active.float().mean(0).clamp(1 / tokens, 1 - 1 / tokens)
    theta = torch.stack([torch.quantile(z[:, i], 1 - float(rate[i])) for i in range(z.shape[1])])
    per_latent = z * (z > theta)
    return {
        "L0": float(active.sum(-1).float().mean()),
        "true support": fvu(x, z * active, W),
        "TopK": fvu(x, topk, W),
        "per-latent theta": fvu(x, per_latent, W),
        "per-latent L0": float((per_latent > 0).sum(-1).float().mean()),
    }


def train_encoder(cell: str, family: str, d_in: int | None, tokens: int) -> dict[str, float]:
    """Validation FVU and L0 of a ``family`` SAE trained on ``cell`` with W_dec frozen at the
    true features (one latent per feature)."""
    import lightning.pytorch as pl

    from bench.robustness import WIDTH, overrides_for
    from saelab.runner import build

    overrides, steps = overrides_for(cell, family, [], tokens, 0)
    overrides = [o for o in overrides if o != f"sae.d_sae={WIDTH}"]
    overrides += [*([f"data.d_in={d_in}"] if d_in else [])]
    cfg = compose_config(overrides, "/readout")
    truth = SyntheticFeatures(OmegaConf.to_object(cfg.data)).features
    cfg.sae.d_sae = truth.shape[0]
    datamodule, module = build(cfg)
    with torch.no_grad():
        module.sae.W_dec.copy_(truth)
        module.sae.W_enc.copy_(truth.T)
    module.sae.W_dec.requires_grad_(False)
    trainer = pl.Trainer(
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        val_check_interval=steps,
    )
    trainer.fit(module, datamodule=datamodule)
    moved = float((module.sae.W_dec - truth).abs().max())
    assert moved < 1e-5, f"the decoder moved by {moved}"
    m = trainer.callback_metrics
    return {"FVU": float(m["val/fvu"]), "L0": float(m["val/l0"])}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    synthetic = [c for c, (_, kind, _, _) in CELLS.items() if kind == "synthetic"]
    parser.add_argument("--cells", nargs="+", choices=synthetic, default=["syn-iid", "syn-plc"])
    parser.add_argument("--d-in", nargs="+", type=int, default=[None], help="override data.d_in")
    parser.add_argument("--tokens", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--train-encoder", action="store_true")
    parser.add_argument("--tokens-train", type=float, default=1e6)
    args = parser.parse_args(argv)

    if args.train_encoder:
        print("| cell | d_in | family | FVU (val) | L0 (val) |")
        print("|---|---|---|---|---|")
        for cell in args.cells:
            for d_in in args.d_in:
                for family in ("jumprelu", "topk"):
                    r = train_encoder(cell, family, d_in, int(args.tokens_train))
                    print(
                        f"| {cell} | {d_in or '-'} | {family} | {r['FVU']:.4f} | {r['L0']:.1f} |",
                        flush=True,
                    )
        return

    print(
        "| cell | d_in | true L0 | FVU true support | FVU TopK | FVU per-latent theta "
        "| per-latent L0 |"
    )
    print("|---|---|---|---|---|---|---|")
    for cell in args.cells:
        for d_in in args.d_in:
            overrides = [*CELLS[cell][3], *([f"data.d_in={d_in}"] if d_in else [])]
            data = OmegaConf.to_object(compose_config(overrides, "/readout").data)
            r = readouts(SyntheticFeatures(data), args.tokens, args.seed)
            print(
                f"| {cell} | {data.d_in} | {r['L0']:.1f} | {r['true support']:.3f} | "
                f"{r['TopK']:.3f} | {r['per-latent theta']:.3f} | {r['per-latent L0']:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
