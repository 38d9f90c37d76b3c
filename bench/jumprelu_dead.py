"""Why do JumpReLU latents die? Trains one run of a bench/robustness.py cell and prints a timeline
of the dead-latent diagnostics, probed every 5% of the run on the current training batch:

    step, frac    progress; `w` marks steps inside the threshold warm-up
    lambda        the L0 controller's multiplier (JumpReLU's target-L0 mode)
    L0            the batch's L0 (JumpReLU's target-L0 controller aims at the cell's L0)
    dead          latents silent for the dead window (what AuxK treats as dead; window in tokens)
    silent        latents that did not fire on this batch
    never         latents that have not fired once since step 0
    dense         latents that fired on more than 10% of the batch
    unreach       latents whose threshold is above every pre-activation of the batch
    dead&unr      of the dead latents, the fraction whose threshold is above every pre-activation
    gap           median over dead latents of (theta - max_b z) / eps: how many bandwidths the
                  threshold sits above the largest pre-activation (> 1: the STE cannot see them)
    zmax<0        of the dead latents, those whose pre-activations are all negative
    top1%         share of the batch's squared norm carried by its 1% largest tokens
    err1%         share of the batch's squared reconstruction error on those tokens

    python bench/jumprelu_dead.py syn-plc --tokens 3e6
    python bench/jumprelu_dead.py gemma-attn-L6 --tokens 3e6 sae.experimental.threshold_warmup=per_latent

Extra arguments are Hydra overrides on top of the cell's JumpReLU run (as --variant in
bench/robustness.py). Runs through the real Hydra config, saelab.runner.build and a Lightning
Trainer, like train.py, with one extra callback that reads the module's state.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402

from saelab.sae import Step  # noqa: E402

COLUMNS = [
    "step",
    "lambda",
    "frac",
    "L0",
    "dead",
    "silent",
    "never",
    "dense",
    "unreach",
    "dead&unr",
    "gap",
    "zmax<0",
    "top1%",
    "err1%",
]


class DeadLatentProbe(pl.Callback):
    def __init__(self, every: int):
        self.every = every
        self.rows: list[list[str]] = []
        self.ever_fired: torch.Tensor | None = None

    @torch.no_grad()
    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        sae = module.sae
        x = module.normalize(batch)
        z = sae.pre_acts(x)
        theta = sae.threshold.detach()
        fired = (z > theta).any(0)
        self.ever_fired = fired if self.ever_fired is None else self.ever_fired | fired
        step = trainer.global_step
        total = module.total_steps()
        if step % self.every and step != total:
            return
        dead = module.dead_mask()
        zmax = z.max(0).values
        unreachable = theta > zmax
        objective = module.objective
        eps = objective.bandwidth
        gap = ((theta - zmax) / eps)[dead]
        sae.eval()  # in training mode the forward would also step the L0 controller
        x_hat = sae(x).x_hat
        sae.train()
        norms = x.pow(2).sum(1)
        top = norms.topk(max(1, len(norms) // 100)).indices
        err = (x - x_hat).pow(2).sum(1)
        objective.train()
        warm = objective.warmup_l0(Step(index=step, total=total)) is not None
        rates = (z > theta).float().mean(0)
        n_dead = int(dead.sum())

        def frac(mask) -> str:
            return f"{float(mask.float().mean()):.1%}"

        self.rows.append(
            [
                f"{step}{'w' if warm else ''}",
                f"{float(getattr(objective, 'l0_multiplier', float('nan'))):.3f}",
                f"{step / total:.2f}",
                f"{float((z > theta).float().sum(1).mean()):.1f}",
                frac(dead),
                frac(~fired),
                frac(~self.ever_fired),
                frac(rates > 0.1),
                frac(unreachable),
                f"{float(unreachable[dead].float().mean()):.0%}" if n_dead else "-",
                f"{float(gap.median()):.1f}" if n_dead else "-",
                f"{float((zmax[dead] <= 0).float().mean()):.0%}" if n_dead else "-",
                f"{float(norms[top].sum() / norms.sum()):.2f}",
                f"{float(err[top].sum() / err.sum()):.2f}",
            ]
        )
        print("| " + " | ".join(self.rows[-1]) + " |", flush=True)


def main(argv=None) -> None:
    from hydra.utils import instantiate

    from bench.robustness import CELLS, overrides_for
    from saelab.runner import build
    from tests.conftest import compose_config

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("cell", choices=list(CELLS))
    parser.add_argument("--tokens", type=float, default=3e6)
    parser.add_argument("--family", default="jumprelu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_intermixed_args(argv)
    if args.cell.startswith("llama"):
        from saelab.lm.pretrain import ensure_tiny_llama

        ensure_tiny_llama()
    overrides, steps = overrides_for(
        args.cell, args.family, args.overrides, int(args.tokens), args.seed
    )
    print(f"cell {args.cell}, {steps} steps; overrides: {' '.join(overrides)}\n")
    with tempfile.TemporaryDirectory() as out:
        cfg = compose_config(overrides, out)
        pl.seed_everything(cfg.seed, workers=True, verbose=False)
        datamodule, module = build(cfg)
        probe = DeadLatentProbe(every=max(1, steps // 20))
        trainer = instantiate(cfg.trainer, logger=False, callbacks=[probe])
        print("| " + " | ".join(COLUMNS) + " |")
        print("|" + "---|" * len(COLUMNS), flush=True)
        trainer.fit(module, datamodule=datamodule)
        val = trainer.validate(module, datamodule=datamodule, verbose=False)[0]
    keys = ("val/l0", "val/fvu", "val/dead_fraction", "val/recovered_fraction", "val/mmcs")
    print("\n" + ", ".join(f"{k} {float(val[k]):.4f}" for k in keys if k in val))
    print(f"dead window: {module._dead_window:,} tokens")


if __name__ == "__main__":
    main()
