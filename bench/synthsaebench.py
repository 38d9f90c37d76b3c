"""SynthSAEBench-16k side by side: saelab's families and SAELens's own trainers on the same
samples, width, batch and L0, every SAE scored by SAELens's ``eval_sae_on_synthetic_data`` on its
export loaded through ``sae_lens.SAE.load_from_disk``: the peer's metric on the peer's loader.

    pip install -e ".[synth]"
    python bench/synthsaebench.py --samples 2e6 --l0 25 20 --seeds 0 1           # CPU budget
    python bench/synthsaebench.py --samples 2e8 --device cuda                     # the protocol
    python bench/synthsaebench.py --variant data.hidden_dim=256 ...               # an ablation

Rows (``--rows``, default all):
- ``saelab:<family>``: ``train.py data=synthsaebench sae=<family>`` with ``sae.d_sae`` = width,
  ``data.batch_size`` = batch and the L0 as ``sae.target_l0`` (the JumpReLU families) or ``sae.k`` (the
  TopK-style families); each family's own default learning rate and schedule. ``jumprelu_paper``
  has no L0 target of its own, so its row adds ``sae.target_l0``.
- ``sae-lens:<arch>``: SAELens's ``SAETrainer`` with its training SAE class and the protocol's
  settings (lr 3e-4, constant), fed the very batches the saelab rows see: ``batchtopk``
  (k = L0), ``jumprelu`` (``jumprelu_sparsity_loss_mode="quadratic"``, ``target_l0`` = L0:
  Gemma Scope 2's penalty), ``matryoshka`` (BatchTopK Matryoshka, the nested widths saelab's
  Matryoshka uses).

Every row of a seed trains on the very same batches: on a CPU they are drawn once per seed and
stored in saelab's cache (``data.stored_batches``; about 6 GB per 2M samples), so each run pays
only for its own training. Every SAE is evaluated on the same ``--eval-samples`` samples (one
RNG seed per row seed).
Each result is appended to ``--out`` (JSON lines) as it finishes; the table is printed at the
end, with the seconds each run took to train (data generation included) and to evaluate.
``--table`` prints the table of every row in ``--out`` at the given budget, whichever run wrote
it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
warnings.filterwarnings("ignore")

SAELAB_ROWS = (
    "jumprelu",
    "jumprelu_paper",
    "batchtopk",
    "topk",
    "matryoshka",
    "matryoshka_jumprelu",
)
SAELENS_ROWS = ("batchtopk", "jumprelu", "matryoshka")
ALL_ROWS = [f"saelab:{f}" for f in SAELAB_ROWS] + [f"sae-lens:{a}" for a in SAELENS_ROWS]
MATRYOSHKA_FRACTIONS = (0.0625, 0.125, 0.25, 0.5, 1.0)  # conf/sae/matryoshka.yaml's default
PUBLISHED = {  # SAELens docs (synth_sae_bench.md), 200M samples, means over seeds
    (25, "BatchTopK"): (0.7316, 0.7574, 0.9837, 0.7923),
    (25, "Matryoshka"): (0.8793, 0.7927, 0.9987, 0.7792),
    (25, "JumpReLU"): (0.7317, 0.7527, 0.9885, 0.7951),
    (20, "BatchTopK"): (0.8183, 0.7526, 0.9760, 0.7889),
    (20, "Matryoshka"): (0.8601, 0.7455, 0.9874, 0.7699),
    (20, "JumpReLU"): (0.8241, 0.7434, 0.9781, 0.7906),
}


def compose(overrides: list[str], output_dir: Path):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from saelab.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose(
            config_name="config", overrides=[*overrides, f"output_dir={output_dir}"]
        )


def data_overrides(args, seed: int) -> list[str]:
    return [
        "data=synthsaebench",
        f"data.batch_size={args.batch}",
        f"data.device={args.device}",
        f"data.stored_batches={args.stored_batches}",
        f"seed={seed}",
        *args.variant,
    ]


def data_module(args, seed: int):
    """The data module every row of ``seed`` reads: saelab's runs compose the same one, and the
    sae-lens rows are fed its train split."""
    from omegaconf import OmegaConf

    cfg = compose(data_overrides(args, seed), Path(tempfile.gettempdir()))
    dm = OmegaConf.to_object(cfg.data).build()
    t0 = time.perf_counter()
    dm.prepare_data()  # builds the model, and stores the draws, the first time
    print(f"# seed {seed}: model and draws ready in {time.perf_counter() - t0:.0f} s", flush=True)
    return dm


def train_saelab(family: str, l0: int, seed: int, args, folder: Path) -> dict:
    from saelab.runner import train

    steps = int(args.samples) // args.batch
    sparsity = [f"sae.target_l0={l0}"] if "jumprelu" in family else [f"sae.k={l0}"]
    overrides = [
        *data_overrides(args, seed),
        f"sae={family}",
        f"sae.d_sae={args.width}",
        *sparsity,
        f"sae.normalization_tokens={args.normalization_tokens}",
        "trainer=default",
        f"trainer.max_steps={steps}",
        f"trainer.val_check_interval={steps}",
        "trainer.limit_val_batches=4",
        f"trainer.accelerator={'gpu' if args.device == 'cuda' else 'cpu'}",
        "logger=none",
        f"checkpoint_every_n_steps={steps}",
        "eval_tokens=0",
        *args.saelab_override,
    ]
    from omegaconf import OmegaConf

    cfg = compose(overrides, folder)
    result = train(cfg)
    if "interrupted" in result:  # a stopped run checkpoints and returns without exporting
        raise SystemExit(
            f"saelab:{family}: training stopped ({result['interrupted']}) at step "
            f"{result['steps']} of {steps}; no row recorded"
        )
    return {"lr": OmegaConf.to_object(cfg.sae).lr}  # the family's default, resolved


class Batches:
    """The training batches the saelab rows read (the data module's train split), in order."""

    def __init__(self, dm, device: str, n: int):
        self.train, self.device, self.n, self.g = dm.split("train"), device, n, 0

    def __iter__(self):
        return self

    def __next__(self) -> torch.Tensor:
        if self.g >= self.n:
            raise StopIteration
        self.g += 1
        return self.train[self.g - 1].to(self.device)


def saelens_config(arch: str, l0: int, args):
    import sae_lens

    d_in = args.d_in
    if arch == "batchtopk":
        return sae_lens.BatchTopKTrainingSAEConfig(d_in=d_in, d_sae=args.width, k=l0)
    if arch == "jumprelu":
        return sae_lens.JumpReLUTrainingSAEConfig(
            d_in=d_in,
            d_sae=args.width,
            jumprelu_sparsity_loss_mode="quadratic",
            target_l0=float(l0),
        )
    widths = [round(f * args.width) for f in MATRYOSHKA_FRACTIONS]
    return sae_lens.MatryoshkaBatchTopKTrainingSAEConfig(
        d_in=d_in, d_sae=args.width, k=l0, matryoshka_widths=widths
    )


def train_saelens(arch: str, l0: int, seed: int, args, folder: Path, dm) -> dict:
    from sae_lens import LoggingConfig
    from sae_lens.registry import get_sae_training_class
    from sae_lens.synthetic import SyntheticSAERunnerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    sae_cfg = saelens_config(arch, l0, args)
    runner_cfg = SyntheticSAERunnerConfig(
        synthetic_model=dm.model.cfg,
        sae=sae_cfg,
        training_samples=int(args.samples) // args.batch * args.batch,
        batch_size=args.batch,
        lr=args.saelens_lr,
        device=args.device,
        checkpoint_path=None,
        output_path=None,
        logger=LoggingConfig(log_to_wandb=False),
    )
    torch.manual_seed(seed)
    sae = get_sae_training_class(sae_cfg.architecture())[0](sae_cfg).to(args.device)
    steps = int(args.samples) // args.batch
    trainer = SAETrainer(
        cfg=runner_cfg.to_sae_trainer_config(),
        sae=sae,
        data_provider=Batches(dm, args.device, steps),
    )
    trainer.fit().save_inference_model(str(folder))
    return {"lr": args.saelens_lr}


def evaluate(folder: Path, dm, args, seed: int) -> dict:
    from sae_lens import SAE
    from sae_lens.synthetic import eval_sae_on_synthetic_data

    sae = SAE.load_from_disk(str(folder), device=args.device)
    model = dm.model
    torch.manual_seed(10_000 + seed)  # every row of a seed is scored on the same samples
    r = eval_sae_on_synthetic_data(
        sae,
        model.feature_dict,
        model.activation_generator,
        num_samples=int(args.eval_samples),
        batch_size=args.batch,
    )
    return {
        "f1": r.classification.f1_score,
        "precision": r.classification.precision,
        "recall": r.classification.recall,
        "mcc": r.mcc,
        "uniqueness": r.uniqueness,
        "explained_variance": r.explained_variance,
        "l0": r.sae_l0,
        "dead": r.dead_latents,
        "shrinkage": r.shrinkage,
    }


def run_one(row: str, l0: int, seed: int, args, dm) -> dict:
    kind, name = row.split(":")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "run"
        t0 = time.perf_counter()
        if kind == "saelab":
            info = train_saelab(name, l0, seed, args, folder)
            export = folder / "sae"
        else:
            export = folder / "sae"
            export.mkdir(parents=True)
            info = train_saelens(name, l0, seed, args, export, dm)
        train_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        scores = evaluate(export, dm, args, seed)
        eval_s = time.perf_counter() - t1
    return {
        "row": row,
        "target_l0": l0,
        "seed": seed,
        "samples": int(args.samples) // args.batch * args.batch,
        "width": args.width,
        "batch": args.batch,
        "variant": args.variant,
        "overrides": args.saelab_override if kind == "saelab" else [],
        "device": args.device,
        "commit": commit(),
        **info,
        **scores,
        "train_s": round(train_s, 1),
        "eval_s": round(eval_s, 1),
    }


def commit() -> str | None:
    """The saelab commit that trained a row (None outside a git checkout)."""
    import subprocess

    done = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    )
    return done.stdout.strip() or None


def table(results: list[dict]) -> str:
    keys = ("f1", "mcc", "uniqueness", "explained_variance", "l0", "dead", "train_s")
    lines = [
        "| L0 | SAE | lr | F1 | MCC | uniqueness | var. explained | L0 measured | dead | s/run | seeds |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    # Rows at another lr or with other overrides are another group, never averaged in.
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        extra = " ".join(o for o in r.get("overrides", []) if not o.startswith("sae.lr="))
        row = f"{r['row']} ({extra})" if extra else r["row"]
        groups.setdefault((r["target_l0"], row, r["lr"]), []).append(r)
    for (l0, row, lr), rs in sorted(groups.items(), key=lambda kv: (-kv[0][0], kv[0][1])):
        cells = []
        for k in keys:
            values = [float(r[k]) for r in rs]
            mean = statistics.fmean(values)
            spread = f" ± {statistics.stdev(values):.4f}" if len(values) > 1 and k != "dead" else ""
            fmt = {"l0": ".1f", "dead": ".0f", "train_s": ".0f"}.get(k, ".4f")
            cells.append(f"{mean:{fmt}}{spread if k not in ('l0', 'train_s') else ''}")
        lines.append(f"| {l0} | {row} | {lr:.2g} | " + " | ".join(cells) + f" | {len(rs)} |")
    return "\n".join(lines)


def published_table(l0s) -> str:
    lines = ["| L0 | SAE (published, 200M samples) | F1 | MCC | uniqueness | var. explained |"]
    lines.append("|---|---|---|---|---|---|")
    for (l0, name), v in PUBLISHED.items():
        if l0 in l0s:
            lines.append(f"| {l0} | {name} | " + " | ".join(f"{x:.4f}" for x in v) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--samples", type=float, default=2e6, help="training samples per SAE")
    p.add_argument("--l0", type=int, nargs="+", default=[25, 20])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--rows", nargs="+", default=ALL_ROWS, choices=ALL_ROWS)
    p.add_argument("--width", type=int, default=4096)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--saelens-lr", type=float, default=3e-4)
    p.add_argument("--eval-samples", type=float, default=100_000)
    p.add_argument(
        "--normalization-tokens",
        type=int,
        default=65_536,
        help="saelab's sae.normalization_tokens (samples read to fix the input scale)",
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--stored-batches",
        type=int,
        default=None,
        help="data.stored_batches: training batches drawn once per seed and read by every row "
        "(default: all of them on a CPU, none on a GPU)",
    )
    p.add_argument("--variant", nargs="*", default=[], help="data.* overrides (an ablation)")
    p.add_argument("--saelab-override", nargs="*", default=[], help="extra saelab overrides")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "synthsaebench_results.jsonl")
    p.add_argument(
        "--table",
        action="store_true",
        help="train nothing: print the table of every row in --out with these --samples, "
        "--width and --batch (the runs of several invocations together)",
    )
    args = p.parse_args()

    steps = int(args.samples) // args.batch
    if args.table:
        rows = [json.loads(line) for line in args.out.read_text().splitlines() if line.strip()]
        keep = {
            "samples": steps * args.batch,
            "width": args.width,
            "batch": args.batch,
            "variant": args.variant,
        }
        rows = [r for r in rows if all(r[k] == v for k, v in keep.items())]
        print(table(rows))
        print()
        print(published_table({r["target_l0"] for r in rows}))
        return
    if args.stored_batches is None:  # drawing bounds a CPU run; a GPU draws faster than it reads
        args.stored_batches = steps if args.device == "cpu" else 0
    results = []
    for seed in args.seeds:
        dm = data_module(args, seed)
        args.d_in = dm.cfg.d_in
        print(
            f"# SynthSAEBench model {dm.cfg.num_features} features x {dm.cfg.hidden_dim} dims; "
            f"{steps * args.batch:,} samples per SAE, width {args.width}, batch {args.batch}, "
            f"device {args.device}, stored batches {args.stored_batches}, torch threads "
            f"{torch.get_num_threads()}",
            flush=True,
        )
        for l0 in args.l0:
            for row in args.rows:
                r = run_one(row, l0, seed, args, dm)
                results.append(r)
                with args.out.open("a") as f:
                    f.write(json.dumps(r) + "\n")
                print(
                    f"{row:22s} L0 {l0} seed {seed}: F1 {r['f1']:.4f} MCC {r['mcc']:.4f} "
                    f"EV {r['explained_variance']:.4f} L0 {r['l0']:.1f} dead {r['dead']} "
                    f"({r['train_s']:.0f} s train, {r['eval_s']:.0f} s eval)",
                    flush=True,
                )
    print()
    print(table(results))
    print()
    print(published_table(set(args.l0)))


if __name__ == "__main__":
    main()
