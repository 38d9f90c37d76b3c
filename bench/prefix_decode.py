"""What Matryoshka's nested-prefix loss costs on the sparse path (a CPU with few active latents).

The prefix reconstructions x_hat_g can be decoded two ways from a step's selected entries:

    segments   each entry decoded once, in the segment [m_{g-1}, m_g) of its latent, and the
               segments summed cumulatively (saelab's way, docs/maths.md §11)
    masked     every prefix decodes every selected entry, the ones past m_g weighted 0

This times one training step (forward and backward) of plain JumpReLU, Matryoshka JumpReLU with
each decode and Matryoshka BatchTopK with each decode, interleaved round by round on the same
batch, and prints the medians and their ratio to plain JumpReLU's step. JumpReLU's steps are in
the per-latent half of its recipe (the part after the TopK warm-up).

    OMP_NUM_THREADS=1 python bench/prefix_decode.py                       # SynthSAEBench's shape
    OMP_NUM_THREADS=1 python bench/prefix_decode.py --d-in 2304 --d-sae 16384 --batch 4096
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from saelab.sae import build_training
from saelab.sae.matryoshka import NestedPrefixes
from saelab.sae.objective import Encoded, Step
from saelab.sae.sparse import decode_selected


def masked_encode_sparse(self, sae, x, step: Step) -> Encoded:
    """The masked decode, for comparison: G - 1 full decodes of the selection."""
    enc = super(NestedPrefixes, self).encode_sparse(sae, x, step)
    cols = enc.sel.cols
    decodes = [
        decode_selected(enc.sel, enc.acts * (cols < end), sae.W_dec) + sae.b_dec
        for end in self.ends
    ]
    return enc._replace(terms={**enc.terms, **self._prefix_term(step.target, decodes)})


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--d-in", type=int, default=768)
    p.add_argument("--d-sae", type=int, default=4096)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--l0", type=int, default=25)
    p.add_argument("--rounds", type=int, default=7)
    a = p.parse_args(argv)
    torch.manual_seed(0)
    x = torch.randn(a.batch, a.d_in)
    step = Step(index=95, total=100, sparse=True)  # past the warm-up: per-latent thresholds
    rows = {
        "jumprelu": ("jumprelu", None),
        "matryoshka_jumprelu, segments": ("matryoshka_jumprelu", None),
        "matryoshka_jumprelu, masked": ("matryoshka_jumprelu", masked_encode_sparse),
        "matryoshka (BatchTopK), segments": ("matryoshka", None),
        "matryoshka (BatchTopK), masked": ("matryoshka", masked_encode_sparse),
    }
    models = {}
    for name, (family, encode) in rows.items():
        knob = {"k": a.l0} if family == "matryoshka" else {"target_l0": a.l0}
        sae, objective = build_training(family, d_in=a.d_in, d_sae=a.d_sae, **knob)
        if hasattr(sae, "log_threshold"):  # thresholds that let a few tens of latents through
            with torch.no_grad():
                z = x @ sae.W_enc + sae.b_enc
                sae.log_threshold.copy_(z.quantile(1 - a.l0 / a.d_sae, dim=0).clamp_min(1e-3).log())
        if encode is not None:
            objective.encode_sparse = encode.__get__(objective)
        models[name] = (sae, objective)
    times: dict[str, list[float]] = {name: [] for name in rows}
    l0s = {}
    for _ in range(a.rounds):
        for name, (sae, objective) in models.items():
            t0 = time.perf_counter()
            out = objective.loss(sae, x, step)
            sum(out.losses.values()).backward()
            times[name].append(time.perf_counter() - t0)
            sae.zero_grad(set_to_none=True)
            l0s[name] = float(out.metrics["l0"])
    base = statistics.median(times["jumprelu"])
    print(
        f"sparse training step, d_in {a.d_in}, d_sae {a.d_sae}, batch {a.batch}, target L0 "
        f"{a.l0}, {torch.get_num_threads()} thread(s), median of {a.rounds} interleaved rounds"
    )
    print("| step | ms | x plain JumpReLU | L0 |")
    print("|---|---|---|---|")
    for name in rows:
        median = statistics.median(times[name])
        print(f"| {name} | {median * 1e3:.1f} | {median / base:.2f} | {l0s[name]:.1f} |")


if __name__ == "__main__":
    main()
