"""saelab against the real peer packages: every saelab family exported and loaded by SAELens,
and SAEs made by SAELens, dictionary_learning and sparsify loaded by saelab, each compared on
the same inputs (encode, decode of the same features, full reconstruction); then SAEBench's
custom-SAE checks on saelab's SAEs. Prints a table; the output is kept in bench/interop_output.txt.

Needs the peers, so it runs in its own venv (docs/interop.md has the set-up):

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 /work/venvs/interop/bin/python bench/interop.py

saelab's SAEs are built with random weights (perturbed biases, thresholds giving a mid-range
L0): the file contract does not depend on training. The peers' SAEs are TRAINED by the peer
for a few hundred steps on random correlated activations where the package trains without a
language model (SAELens's training classes, dictionary_learning's trainSAE), and saved by the
package's own save function; sparsify's trainer needs a model, so its coder gets random
weights and is saved with SparseCoder.save_to_disk.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata as md
import json
import sys
import tempfile
import warnings
from pathlib import Path

import torch

warnings.filterwarnings("ignore")
torch.manual_seed(0)

from saelab.io import save_sae  # noqa: E402
from saelab.sae import FAMILIES, BatchTopKSAE, build_sae, load_sae  # noqa: E402

D_IN, D_SAE, K = 64, 256, 16
MIX = torch.randn(D_IN, D_IN) / D_IN**0.5


def activations(n: int) -> torch.Tensor:
    return torch.randn(n, D_IN) @ MIX * 2 + 0.5


X = activations(2048)
ROWS: list[tuple[str, ...]] = []


def diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


def row(
    direction,
    what,
    peer_class,
    saelab_class,
    f_ours,
    f_theirs,
    dec_ours,
    dec_theirs,
    rec_ours,
    rec_theirs,
):
    l0 = float((f_theirs > 0).float().sum(-1).mean())
    ROWS.append(
        (
            direction,
            what,
            peer_class,
            saelab_class,
            f"{l0:.1f}",
            f"{diff(f_ours, f_theirs):.1e}",
            f"{diff(dec_ours, dec_theirs):.1e}",
            f"{diff(rec_ours, rec_theirs):.1e}",
            f"{float(rec_theirs.abs().max()):.1f}",
        )
    )


# --- saelab -> SAELens ---------------------------------------------------------------------------
def saelab_to_saelens(root: Path) -> None:
    from sae_lens import SAE

    meta = {"model_name": "gpt2", "hook_name": "blocks.6.hook_resid_post", "hook_layer": 6}
    for family in FAMILIES:
        fields = {f.name for f in dataclasses.fields(FAMILIES[family].sae.config_class)}
        sae = build_sae(family, d_in=D_IN, d_sae=D_SAE, **({"k": K} if "k" in fields else {}))
        sae.eval()
        with torch.no_grad():
            for p in sae.parameters():
                p.add_(0.02 * torch.randn_like(p))
            if family == "jumprelu":
                sae.log_threshold.copy_(torch.log(torch.rand(D_SAE) * 0.5 + 0.5))
            if family == "gated":
                sae.b_gate.sub_(0.5)
            if family == "relu":
                sae.b_enc.sub_(1.0)
        if FAMILIES[family].objective.unit_norm_decoder:  # as training keeps them
            sae.normalize_decoder()
        if isinstance(sae, BatchTopKSAE):  # its inference threshold, estimated in training
            sae.threshold.fill_(0.8)
        folder = save_sae(sae, root / f"saelab-{family}", metadata=meta)
        theirs = SAE.load_from_disk(str(folder))
        assert theirs.cfg.metadata.hook_name == meta["hook_name"]
        ours = sae.export_form()
        f = sae.encode(X)
        with torch.no_grad():
            f_theirs = theirs.encode(X)
            row(
                "saelab -> SAELens",
                family,
                type(theirs).__name__,
                type(sae).__name__,
                f,
                f_theirs,
                ours.decode(f_theirs),
                theirs.decode(f_theirs),
                ours(X).x_hat,
                theirs(X),
            )


# --- SAELens -> saelab ---------------------------------------------------------------------------
def train_saelens(sae, steps: int = 200) -> None:
    from sae_lens.saes.sae import TrainStepInput

    opt = torch.optim.Adam(sae.parameters(), lr=3e-3)
    coefficients = {
        name: (c.value if hasattr(c, "value") else c) for name, c in sae.get_coefficients().items()
    }
    for step in range(steps):
        x = activations(256)
        out = sae.training_forward_pass(
            TrainStepInput(
                sae_in=x,
                coefficients=coefficients,
                dead_neuron_mask=None,
                n_training_steps=step,
                is_logging_step=False,
            )
        )
        opt.zero_grad()
        out.loss.backward()
        opt.step()


def saelens_to_saelab(root: Path) -> None:
    import sae_lens.saes as S
    from sae_lens import SAE

    common = {"d_in": D_IN, "d_sae": D_SAE}
    cases = {
        "standard": S.StandardTrainingSAE(
            S.StandardTrainingSAEConfig(**common, l1_coefficient=0.3)
        ),
        "gated": S.GatedTrainingSAE(S.GatedTrainingSAEConfig(**common, l1_coefficient=0.3)),
        "jumprelu": S.JumpReLUTrainingSAE(
            S.JumpReLUTrainingSAEConfig(**common, l0_coefficient=0.3, jumprelu_init_threshold=0.3)
        ),
        "topk": S.TopKTrainingSAE(S.TopKTrainingSAEConfig(**common, k=K)),
        "topk (rescale_acts_by_decoder_norm)": S.TopKTrainingSAE(
            S.TopKTrainingSAEConfig(**common, k=K, rescale_acts_by_decoder_norm=True)
        ),
        "batchtopk": S.BatchTopKTrainingSAE(S.BatchTopKTrainingSAEConfig(**common, k=K)),
        "matryoshka_batchtopk": S.MatryoshkaBatchTopKTrainingSAE(
            S.MatryoshkaBatchTopKTrainingSAEConfig(**common, k=K, matryoshka_widths=[64, 128, 256])
        ),
    }
    for name, training_sae in cases.items():
        train_saelens(training_sae)
        folder = root / f"saelens-{name.split()[0]}-{len(ROWS)}"
        training_sae.save_inference_model(str(folder))
        theirs = SAE.load_from_disk(str(folder))
        ours = load_sae(folder)
        with torch.no_grad():
            f_theirs = theirs.encode(X)
            row(
                "SAELens -> saelab",
                name,
                f"{type(theirs).__name__} ({json.loads((folder / 'cfg.json').read_text())['architecture']})",
                type(ours).__name__,
                ours.encode(X),
                f_theirs,
                ours.decode(f_theirs),
                theirs.decode(f_theirs),
                ours(X).x_hat,
                theirs(X),
            )


# --- dictionary_learning -> saelab ---------------------------------------------------------------
def dictionary_learning_to_saelab(root: Path) -> None:
    from dictionary_learning import trainers as T
    from dictionary_learning.trainers.matryoshka_batch_top_k import MatryoshkaBatchTopKTrainer
    from dictionary_learning.trainers.standard import StandardTrainerAprilUpdate
    from dictionary_learning.training import trainSAE
    from dictionary_learning.utils import load_dictionary

    common = {
        "steps": 300,
        "activation_dim": D_IN,
        "dict_size": D_SAE,
        "layer": 3,
        "lm_name": "EleutherAI/pythia-70m-deduped",
        "device": "cpu",
        "seed": 0,
        "warmup_steps": 10,
    }
    sparse = {"sparsity_warmup_steps": 10}
    topk = {"k": K, "threshold_start_step": 20}
    configs = {
        "StandardTrainer": {"trainer": T.StandardTrainer, **common, **sparse, "l1_penalty": 0.05},
        "StandardTrainerAprilUpdate": {
            "trainer": StandardTrainerAprilUpdate,
            **common,
            **sparse,
            "l1_penalty": 0.05,
        },
        "GatedSAETrainer": {"trainer": T.GatedSAETrainer, **common, **sparse, "l1_penalty": 0.05},
        "JumpReluTrainer": {"trainer": T.JumpReluTrainer, **common, **sparse, "lr": 1e-3},
        "TopKTrainer": {"trainer": T.TopKTrainer, **common, **topk},
        "BatchTopKTrainer": {"trainer": T.BatchTopKTrainer, **common, **topk},
        "MatryoshkaBatchTopKTrainer": {
            "trainer": MatryoshkaBatchTopKTrainer,
            **common,
            **topk,
            "group_fractions": [0.25, 0.25, 0.5],
        },
    }
    for name, config in configs.items():
        save_dir = root / f"dl-{name}"
        data = iter(activations(256) for _ in range(10**9))
        trainSAE(data, [dict(config)], steps=common["steps"], save_dir=str(save_dir), device="cpu")
        folder = save_dir / "trainer_0"
        theirs, _ = load_dictionary(str(folder), "cpu")
        ours = load_sae(folder)
        with torch.no_grad():
            f_theirs = theirs.encode(X)
            row(
                "dictionary_learning -> saelab",
                name,
                type(theirs).__name__,
                type(ours).__name__,
                ours.encode(X),
                f_theirs,
                ours.decode(f_theirs),
                theirs.decode(f_theirs),
                ours(X).x_hat,
                theirs(X),
            )


# --- sparsify -> saelab --------------------------------------------------------------------------
def sparsify_to_saelab(root: Path) -> None:
    from sparsify import SparseCoder, SparseCoderConfig

    coder = SparseCoder(D_IN, SparseCoderConfig(k=K, num_latents=D_SAE))
    with torch.no_grad():
        coder.encoder.bias.add_(0.1 * torch.randn(D_SAE))
        coder.b_dec.add_(0.3 * torch.randn(D_IN))
    folder = root / "sparsify" / "layers.6"
    coder.save_to_disk(folder)
    theirs = SparseCoder.load_from_disk(folder)
    ours = load_sae(folder)
    with torch.no_grad():
        out = theirs.encode(X)
        f_theirs = torch.zeros(len(X), D_SAE).scatter(-1, out.top_indices, out.top_acts)
        dec_theirs = theirs.decode(out.top_acts, out.top_indices)
        row(
            "sparsify -> saelab",
            "topk (random weights)",
            type(theirs).__name__,
            type(ours).__name__,
            ours.encode(X),
            f_theirs,
            ours.decode(f_theirs),
            dec_theirs,
            ours(X).x_hat,
            theirs(X).sae_out,
        )


# --- SAEBench ------------------------------------------------------------------------------------
def saebench_checks(root: Path) -> list[tuple[str, ...]]:
    from sae_bench.evals.core.main import get_featurewise_weight_based_metrics
    from sae_bench.sae_bench_utils.general_utils import check_decoder_norms, load_and_format_sae
    from sae_lens import SAE

    out = []
    for family in ("relu", "gated", "jumprelu", "topk", "batchtopk"):
        folder = root / f"saelab-{family}"
        loaders = [
            ("saelab.sae.load_sae", load_sae(folder)),
            ("sae_lens SAE.load_from_disk", SAE.load_from_disk(str(folder))),
        ]
        if (
            family == "relu"
        ):  # ReLU does not keep unit rows: fold the norms (exact), as SAEBench does
            loaders.append(
                (
                    "SAE.load_from_disk(..., fold_W_dec_norm=True)",
                    SAE.load_from_disk(str(folder), fold_W_dec_norm=True),
                )
            )
        for how, sae in loaders:
            unit = check_decoder_norms(sae.W_dec.data)
            _, formatted, _ = load_and_format_sae("saelab", sae, "cpu")
            metrics = get_featurewise_weight_based_metrics(formatted)
            out.append(
                (
                    family,
                    how,
                    f"{formatted.cfg.hook_name} / layer {formatted.cfg.hook_layer}",
                    "yes" if unit else "no",
                    f"{len(metrics['encoder_bias'])} latents",
                )
            )
    return out


def table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    versions = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "saelab": md.version("saelab") if _installed("saelab") else "worktree",
        "sae-lens": md.version("sae-lens"),
        "dictionary-learning": md.version("dictionary-learning"),
        "eai-sparsify": md.version("eai-sparsify"),
        "sae-bench": md.version("sae-bench"),
    }
    print("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    print(f"inputs: {len(X)} rows, d_in {D_IN}, d_sae {D_SAE}, k {K}; max |difference| over all\n")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        saelab_to_saelens(root)
        saelens_to_saelab(root)
        dictionary_learning_to_saelab(root)
        sparsify_to_saelab(root)
        header = (
            "direction",
            "SAE",
            "peer class",
            "saelab class",
            "L0",
            "encode",
            "decode(same f)",
            "reconstruction",
            "max |x_hat|",
        )
        print(table(header, ROWS))
        print(
            "\nSAEBench custom-SAE checks (load_and_format_sae, decoder norms, weight metrics):\n"
        )
        header = ("family", "loaded with", "hook name / layer", "unit-norm W_dec", "core weights")
        print(table(header, saebench_checks(root)))


def _installed(name: str) -> bool:
    try:
        md.version(name)
        return True
    except md.PackageNotFoundError:
        return False


if __name__ == "__main__":
    main()
