"""Is it the dictionary or the selection rule? JumpReLU against TopK on a cell of the robustness
matrix, each SAE read out with both rules.

JumpReLU keeps latent i when z_i > theta_i (a per-latent threshold); TopK keeps each token's k
largest z (a per-token ranking). This trains both families on a cell exactly as
bench/robustness.py does (3M tokens, seed 0 by default), then measures FVU on the cell's
validation tokens four ways:

    JumpReLU, own thresholds        the trained JumpReLU SAE as it is
    JumpReLU, TopK's ranking        its encoder and decoder, each token keeping its k = L0 target
                                    largest pre-activations
    TopK, own ranking               the trained TopK SAE as it is
    TopK, per-latent thresholds     its encoder and decoder, latent i firing when z_i > theta_i,
                                    theta_i set on the first half of the tokens so that i fires as
                                    often as TopK chose it there; FVU on the second half

If ranking reads JumpReLU's dictionary better than its own thresholds do, and thresholds read
TopK's dictionary worse than ranking does, the FVU gap on that cell is the rule's, not a
dictionary JumpReLU failed to learn (docs/robustness.md, phase 7).

    python bench/selection.py --cells gemma-attn-L18 llama-resid-L5
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

from bench.robustness import CELLS  # noqa: E402
from saelab.sae.auxk import scatter_topk  # noqa: E402
from saelab.sae.jumprelu import JumpReLUObjective, JumpReLUTrainConfig  # noqa: E402
from tests.conftest import compose_config, fit_module  # noqa: E402


def fvu(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    return float((x_hat - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum())


def trained(cell: str, family: str, tokens: int, seed: int):
    """The cell's datamodule and LightningModule after training as bench/robustness.py does."""
    from bench.robustness import overrides_for
    from saelab.runner import build

    if cell.startswith("llama"):
        from saelab.lm.pretrain import ensure_tiny_llama

        ensure_tiny_llama()
    overrides, steps = overrides_for(cell, family, [], tokens, seed)
    datamodule, module = build(compose_config(overrides, "/selection"))
    fit_module(datamodule, module, steps=steps)
    module.eval()
    return datamodule, module


@torch.no_grad()
def read_jumprelu(sae, x: torch.Tensor, k: int) -> dict[str, float]:
    """A JumpReLU SAE on tokens x (normalised), with its own thresholds and with TopK's ranking."""
    own = sae.encode(x)
    return {
        "JumpReLU, own thresholds": fvu(x, sae.decode(own)),
        "JumpReLU, TopK's ranking": fvu(x, sae.decode(scatter_topk(sae.pre_acts(x), k))),
        "JumpReLU L0": float((own > 0).sum(-1).float().mean()),
    }


@torch.no_grad()
def read_topk(sae, x: torch.Tensor, k: int) -> dict[str, float]:
    """A TopK SAE with its own ranking and with per-latent thresholds rate-matched to it on the
    first half of x; both measured on the second half."""
    half = x.shape[0] // 2
    z = sae.pre_acts(x)
    # The per-token warm-up's own thresholds: latent i at the (c_i + 1)-th largest z_i of the
    # first half, c_i = the rows TopK's selection kept it on (never kept: its largest value).
    warmup = JumpReLUObjective(JumpReLUTrainConfig(d_in=sae.d_in, d_sae=sae.d_sae, target_l0=k))
    _, theta = warmup.per_token_thresholds(z[:half], k)
    zt, xt = z[half:], x[half:]
    thresholded = zt * (zt > theta)
    return {
        "TopK, own ranking": fvu(xt, sae.decode(scatter_topk(zt, k))),
        "TopK, per-latent thresholds": fvu(xt, sae.decode(thresholded)),
        "TopK thresholds L0": float((thresholded > 0).sum(-1).float().mean()),
    }


def readouts(cell: str, tokens: int, seed: int) -> dict[str, float]:
    k = round(CELLS[cell][2])
    out: dict[str, float] = {}
    for family, read in (("jumprelu", read_jumprelu), ("topk", read_topk)):
        datamodule, module = trained(cell, family, tokens, seed)
        with torch.no_grad():
            x = torch.cat([module.normalize(b) for b in datamodule.val_dataloader()])
        out.update(read(module.sae, x, k))
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", nargs="+", choices=sorted(CELLS), default=["gemma-attn-L18"])
    parser.add_argument("--tokens", type=float, default=3e6)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    keys = [
        "JumpReLU, own thresholds",
        "JumpReLU, TopK's ranking",
        "TopK, own ranking",
        "TopK, per-latent thresholds",
        "JumpReLU L0",
        "TopK thresholds L0",
    ]
    print("| cell | " + " | ".join(keys) + " |")
    print("|---|" + "---|" * len(keys), flush=True)
    for cell in args.cells:
        r = readouts(cell, int(args.tokens), args.seed)
        cells = [f"{r[key]:.4f}" if "L0" not in key else f"{r[key]:.1f}" for key in keys]
        print(f"| {cell} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
