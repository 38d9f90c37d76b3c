"""The robustness matrix: JumpReLU (saelab's default recipe), TopK and BatchTopK at matched width,
tokens and L0 on cells the JumpReLU recipe was NOT chosen on, printed as one table.

Cells (every one has a fixed half, `tune` or `heldout`, decided here and never by results):

    tiny-gemma-2 (26 x 128 Gemma 2, Python source)  resid, mlp, attn at layer 6 (tune) / 18 (heldout)
    tiny-llama (8 x 256 Llama, English prose)       resid L2 + mlp L5 (tune) / resid L5 + mlp L2 (heldout)
    synthetic, power law + co-firing + log-normal   plc (tune) / plc-b (heldout, other law and seed)
    ... the same with massive-activation tokens     out (tune) / out-b (heldout)
    ... saelab's default synthetic problem          iid (tune) / iid-b (heldout, wider, noisy)

Every run: width 1,024, batch 1,024, the budget's tokens (1M = 977 steps), L0 target 32 on LM
cells and the true L0 on synthetic ones (JumpReLU `sae.target_l0`, TopK/BatchTopK `sae.k`). Every
family trains with JumpReLU's optimiser: its default Adam lr (3e-3 x sqrt(256 / d_in) at any
width: 4.2e-3 on tiny-gemma-2, 3e-3 on tiny-llama, 6e-3 on the 64-wide synthetic problems),
beta1 0.9, beta2 0.999; TopK/BatchTopK keep their Adam eps 6.25e-10 and AuxK (aux_k = d_in/2,
1/32). LM cells cache 1,048,576 training tokens (3M tokens = 3 passes) and report the end-of-run
evaluation with the SAE spliced into the LM on 8,192 held-out tokens (FVU, L0, dead = never fired
there, delta LM loss); synthetic cells report validation on 65,536 tokens (FVU, L0, dead, MMCS,
recovered = true features whose best decoder row has cosine > 0.9).

    OMP_NUM_THREADS=1 python bench/robustness.py                      # the matrix, 1M and 3M tokens
    python bench/robustness.py --half tune --budgets 3e6             # the tune half at 3M only
    python bench/robustness.py --long                                # synthetic cells at 30M tokens
    python bench/robustness.py --families jumprelu --half tune \\
        --variant per_latent=sae.experimental.threshold_warmup=per_latent          # a JumpReLU variant
    python bench/robustness.py --cells syn-plc --budgets 3e6 --curve 293  # validate every 293 steps
                                                  # (JumpReLU: + theta median, max, lambda)
    python bench/robustness.py --cells syn-iid --budgets 3e6 --seeds 0 1 2  # + the spread across seeds
    python bench/robustness.py --table                                # print the table, run nothing

A variant's overrides may use {L0}, {STEPS}, {TOKENS}, {WIDTH} and {BATCH} (the run's target L0,
steps, training tokens, latents and batch), or an expression of them, e.g.
`sae.dead_tokens_window={int(100 * WIDTH / L0)}`. Every finished run is appended to
bench/robustness_results.jsonl (--results) with a fingerprint of its resolved config (family
defaults included), and skipped when a row with the same cell, tokens, seed and fingerprint is
there: a stopped matrix resumes where it stopped, and a changed default reruns. The fingerprint
covers configuration only: a change of code with the same config matches older rows (each row
keeps its `commit`), and a new knob whose default is not None changes every fingerprint. Rows
print as runs finish; the table of every selected result (old and new) prints at the end, then
JumpReLU against the targets where a cell has both a JumpReLU and a TopK row.

Runs through the real Hydra configs and saelab.runner.train, exactly like train.py. tiny-llama is
built (pretrained, about 45 min on a free core) by saelab.lm.pretrain.ensure_tiny_llama the first
time a cell needs it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WIDTH = 1024
BATCH = 1024
LM_L0 = 32
EVAL_TOKENS = 8192
LM_TRAIN_TOKENS = 1_048_576
# Expanded here: Hydra's override grammar does not accept a bare "~".
PROSE = str(Path("~/.cache/saelab/corpora/english-prose").expanduser())
RESULTS = ROOT / "bench" / "robustness_results.jsonl"

SHARED = [
    "logger=none",
    "++trainer.enable_progress_bar=false",
    "++trainer.enable_model_summary=false",
    "export=false",
    "checkpoint_every_n_steps=100000000",
    f"sae.d_sae={WIDTH}",
    f"data.batch_size={BATCH}",
]
LM = ["data.progress=false", f"data.train_tokens={LM_TRAIN_TOKENS}", f"eval_tokens={EVAL_TOKENS}"]
TINY_GEMMA = [*LM, "model=tiny-gemma-2"]
TINY_LLAMA = [*LM, "model=tiny-llama", f"data.corpus.source={PROSE}"]
SYNTHETIC = ["sae.normalization_tokens=200000"]
PLC = [*SYNTHETIC, "data=synthetic_lm_like"]
# The held-out power-law data: another exponent, cluster size, co-firing, tail and seed.
PLC_B = [
    *PLC,
    "data.zipf_exponent=0.7",
    "data.cluster_size=2",
    "data.cofire_prob=0.7",
    "data.lognormal_sigma=1.0",
    "data.seed=101",
]
OUTLIERS = ["data.outlier_fraction=0.01", "data.outlier_scale=10", "data.outlier_dims=4"]
OUTLIERS_B = ["data.outlier_fraction=0.005", "data.outlier_scale=30", "data.outlier_dims=2"]

# name -> (half, kind, target L0, overrides). The halves are balanced across kinds: each site of
# each LM and each synthetic family has one tune and one held-out cell.
CELLS: dict[str, tuple[str, str, int, list[str]]] = {
    "gemma-resid-L6": ("tune", "lm", LM_L0, [*TINY_GEMMA, "site=resid", "layer=6"]),
    "gemma-mlp-L6": ("tune", "lm", LM_L0, [*TINY_GEMMA, "site=mlp", "layer=6"]),
    "gemma-attn-L6": ("tune", "lm", LM_L0, [*TINY_GEMMA, "site=attn", "layer=6"]),
    "gemma-resid-L18": ("heldout", "lm", LM_L0, [*TINY_GEMMA, "site=resid", "layer=18"]),
    "gemma-mlp-L18": ("heldout", "lm", LM_L0, [*TINY_GEMMA, "site=mlp", "layer=18"]),
    "gemma-attn-L18": ("heldout", "lm", LM_L0, [*TINY_GEMMA, "site=attn", "layer=18"]),
    "llama-resid-L2": ("tune", "lm", LM_L0, [*TINY_LLAMA, "site=resid", "layer=2"]),
    "llama-mlp-L5": ("tune", "lm", LM_L0, [*TINY_LLAMA, "site=mlp", "layer=5"]),
    "llama-resid-L5": ("heldout", "lm", LM_L0, [*TINY_LLAMA, "site=resid", "layer=5"]),
    "llama-mlp-L2": ("heldout", "lm", LM_L0, [*TINY_LLAMA, "site=mlp", "layer=2"]),
    "syn-plc": ("tune", "synthetic", 13, PLC),
    "syn-out": ("tune", "synthetic", 13, [*PLC, *OUTLIERS]),
    "syn-iid": ("tune", "synthetic", 8, [*SYNTHETIC, "data=synthetic"]),
    "syn-plc-b": ("heldout", "synthetic", 13, PLC_B),
    "syn-out-b": ("heldout", "synthetic", 13, [*PLC_B, *OUTLIERS_B]),
    "syn-iid-b": (
        "heldout",
        "synthetic",
        10,
        [
            *SYNTHETIC,
            "data=synthetic",
            "data.n_features=768",
            "data.mean_l0=10",
            "data.noise_std=0.02",
            "data.seed=101",
        ],
    ),
}
# TopK and BatchTopK train at the lr JumpReLU's default gives the cell ({JR_LR}) and beta1 0.9, so
# every family of a cell has the same optimiser.
OPTIMISER = ["sae.lr={JR_LR}", "sae.adam_beta1=0.9"]
FAMILIES = {
    "jumprelu": ["sae=jumprelu", "sae.target_l0={L0}"],
    "topk": ["sae=topk", "sae.k={L0}", *OPTIMISER],
    "batchtopk": ["sae=batchtopk", "sae.k={L0}", *OPTIMISER],
}
COLUMNS = ["cell", "half", "tokens", "family", "seed", "L0", "FVU", "dead", "dLM", "recov", "MMCS"]
COLUMNS += ["s"]


def commit() -> str:
    """Short hash of the checked-out commit, '+' if the tree has uncommitted changes (other than
    the results this script appends)."""
    git = ["git", "-C", str(ROOT)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(
        [
            *git,
            "status",
            "--porcelain",
            "--untracked-files=no",
            "--",
            ".",
            f":(exclude){RESULTS.relative_to(ROOT)}",
        ],
        capture_output=True,
        text=True,
    )
    return head.stdout.strip() + ("+" if dirty.stdout.strip() else "")


# The commit this process started at: the code it runs (saelab is imported once, at the first
# run), even if the checkout moves while a long matrix runs.
START_COMMIT = commit()


def recipe(overrides: list[str]) -> str:
    """Fingerprint of everything a run is configured with: the family's dataclass after its
    defaults are resolved (so a changed default is a new recipe) and the rest of the composed
    config, without the output folder and without unset (None) keys (so a knob added as off
    leaves older rows matching)."""
    import hashlib

    from omegaconf import OmegaConf

    from tests.conftest import compose_config

    cfg = compose_config(overrides, "/robustness-run")
    resolved = OmegaConf.to_container(cfg, resolve=True)
    resolved["sae"] = dataclasses.asdict(OmegaConf.to_object(cfg.sae))
    resolved.pop("output_dir")
    resolved["trainer"].pop("default_root_dir", None)

    def drop_none(x):
        if isinstance(x, dict):
            return {k: drop_none(v) for k, v in x.items() if v is not None}
        return [drop_none(v) for v in x] if isinstance(x, list) else x

    blob = json.dumps(drop_none(resolved), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def jumprelu_lr(cell_overrides: list[str]) -> float:
    """JumpReLU's default lr on this cell (it depends on d_in, read from the cell's data or
    model), at the matrix's width."""
    from omegaconf import OmegaConf

    from tests.conftest import compose_config

    cfg = compose_config([*SHARED, *cell_overrides, "sae=jumprelu"], "/robustness-lr")
    return OmegaConf.to_object(cfg.sae).lr


def run_key(cell: str, family: str, tokens: int, seed: int, recipe: str) -> str:
    # The variant's name is a label: two names with the same resolved config are the same run.
    return f"{cell}|{family}|{tokens}|{seed}|{recipe}"


def overrides_for(
    cell: str, family: str, variant: list[str], tokens: int, seed: int, curve: int = 0
) -> tuple[list[str], int]:
    _, _, l0, cell_overrides = CELLS[cell]
    steps = max(1, round(tokens / BATCH))
    names = {"L0": l0, "STEPS": steps, "TOKENS": steps * BATCH, "WIDTH": WIDTH, "BATCH": BATCH}
    if any("{JR_LR}" in o for o in FAMILIES[family]):
        names["JR_LR"] = jumprelu_lr(cell_overrides)

    def sub(o: str) -> str:
        # {expression} in names above, e.g. {L0} or {int(100 * WIDTH / L0)}: the user's own
        # command line, evaluated with nothing but these names, int and round.
        return re.sub(
            r"\{([^{}]+)\}",
            lambda m: str(
                eval(m.group(1), {"__builtins__": {}, "int": int, "round": round}, names)
            ),
            o,
        )

    shared = SHARED
    if curve:  # validation every `curve` steps, read back from TensorBoard
        shared = [o for o in SHARED if not o.startswith("logger=")] + ["logger=tensorboard"]
    overrides = [
        *shared,
        *cell_overrides,
        *(sub(o) for o in FAMILIES[family]),
        f"trainer.max_steps={steps}",
        f"trainer.val_check_interval={curve or steps}",
        f"seed={seed}",
        *(sub(o) for o in variant),
    ]
    return overrides, steps


def read_curve(folder: str) -> list[dict]:
    """The run's validations from its TensorBoard events: one dict per validated step, with
    JumpReLU's threshold statistics and lambda as last logged in training at or before it."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    names = {
        "val/fvu": "FVU",
        "val/l0": "L0",
        "val/dead_fraction": "dead",
        "val/recovered_fraction": "recov",
    }
    training = {
        "train/threshold/max": "theta_max",
        "train/threshold/median": "theta_median",
        "train/l0_multiplier": "lambda",
    }
    points: dict[int, dict] = {}
    logged: dict[str, list] = {}
    for events in sorted(Path(folder).rglob("events.out.tfevents*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        tags = set(acc.Tags()["scalars"])
        for tag in set(names) & tags:
            for e in acc.Scalars(tag):
                points.setdefault(e.step, {"step": e.step})[names[tag]] = e.value
        for tag in set(training) & tags:
            logged.setdefault(training[tag], []).extend((e.step, e.value) for e in acc.Scalars(tag))
    for key, series in logged.items():
        series.sort()
        for step, point in points.items():
            before = [v for s, v in series if s <= step]
            if before:
                point[key] = before[-1]
    curve: list[dict] = []
    for k in sorted(points):  # the end-of-run validation repeats the last one: kept once
        same = curve and {**curve[-1], "step": k} == points[k]
        if not same:
            curve.append(points[k])
    return curve


def run(cell: str, family: str, variant: list[str], tokens: int, seed: int, curve: int = 0) -> dict:
    from saelab.runner import train
    from tests.conftest import compose_config

    half, kind, l0, _ = CELLS[cell]
    overrides, steps = overrides_for(cell, family, variant, tokens, seed, curve)
    fingerprint = recipe(overrides)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        m = train(compose_config(overrides, out))
        seconds = time.perf_counter() - start
        points = read_curve(out) if curve else None
    if "interrupted" in m:  # a stopped run checkpoints and returns without validating
        raise SystemExit(
            f"{cell} {family}: training stopped ({m['interrupted']}) at step {m['steps']} of "
            f"{steps}; no row recorded"
        )
    if kind == "lm":
        scores = {
            "L0": m["eval/l0"],
            "FVU": m["eval/fvu"],
            "dead": m["eval/dead_fraction"],
            "dLM": m["eval/delta_lm_loss"],
            "recov": None,
            "MMCS": None,
        }
    else:
        scores = {
            "L0": m["val/l0"],
            "FVU": m["val/fvu"],
            "dead": m["val/dead_fraction"],
            "dLM": None,
            "recov": m["val/recovered_fraction"],
            "MMCS": m["val/mmcs"],
        }
    return {
        "cell": cell,
        "half": half,
        "kind": kind,
        "target_l0": l0,
        "tokens": steps * BATCH,
        "steps": steps,
        "seed": seed,
        **scores,
        "s": seconds,
        "dense_10pct": m.get("eval/dense_10pct_fraction", m.get("val/dense_10pct_fraction")),
        "overrides": overrides,
        "recipe": fingerprint,
        "commit": START_COMMIT,
        **({"curve": points} if curve else {}),
    }


def fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def row_cells(r: dict) -> list[str]:
    label = r["family"] + (f":{r['variant']}" if r["variant"] else "")
    return [
        r["cell"],
        r["half"],
        f"{r['tokens'] / 1e6:.0f}M" if r["tokens"] >= 1e6 else f"{r['tokens'] / 1e6:.1f}M",
        label,
        str(r["seed"]),
        fmt(r["L0"], ".1f"),
        fmt(r["FVU"], ".4f"),
        fmt(r["dead"], ".1%"),
        fmt(r["dLM"], ".4f"),
        fmt(r["recov"], ".1%"),
        fmt(r["MMCS"], ".3f"),
        f"{r['s']:.0f}",
    ]


def print_header() -> None:
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS), flush=True)


def print_row(r: dict) -> None:
    print("| " + " | ".join(row_cells(r)) + " |", flush=True)


def print_curve(r: dict) -> None:
    label = r["family"] + (f":{r['variant']}" if r["variant"] else "")
    print(f"\n{r['cell']} {r['tokens'] / 1e6:.0f}M {label}, validation during training:\n")
    # JumpReLU's thresholds and lambda, where the row has them (rows before they were read do not)
    extra = [k for k in ("theta_median", "theta_max", "lambda") if any(k in p for p in r["curve"])]
    print("| step | L0 | FVU | dead | recov |" + "".join(f" {k} |" for k in extra))
    print("|---|---|---|---|---|" + "---|" * len(extra))
    for p in r["curve"]:
        cells = [str(p["step"]), fmt(p.get("L0"), ".1f"), fmt(p.get("FVU"), ".4f")]
        cells += [fmt(p.get("dead"), ".1%"), fmt(p.get("recov"), ".1%")]
        cells += [fmt(p.get(k), ".3g") for k in extra]
        print("| " + " | ".join(cells) + " |")


def targets(jumprelu: dict, topk: dict) -> dict[str, str]:
    """Issue 15's targets for one cell, budget and seed: JumpReLU's row against TopK's."""

    def verdict(ok: bool, mine: str, theirs: str = "") -> str:
        return ("yes" if ok else "**no**") + f" ({mine}{' vs ' + theirs if theirs else ''})"

    out = {
        "dead <= 1%": verdict(jumprelu["dead"] <= 0.01, f"{jumprelu['dead']:.1%}"),
        "L0 within 5%": verdict(
            abs(jumprelu["L0"] / jumprelu["target_l0"] - 1) <= 0.05,
            f"{jumprelu['L0']:.1f} for {jumprelu['target_l0']}",
        ),
        "FVU <= TopK": verdict(
            jumprelu["FVU"] <= topk["FVU"], f"{jumprelu['FVU']:.4f}", f"{topk['FVU']:.4f}"
        ),
    }
    if jumprelu["dLM"] is not None:
        out["dLM or recovered vs TopK"] = verdict(
            jumprelu["dLM"] <= topk["dLM"], f"dLM {jumprelu['dLM']:.4f}", f"{topk['dLM']:.4f}"
        )
    else:
        out["dLM or recovered vs TopK"] = verdict(
            jumprelu["recov"] >= topk["recov"],
            f"recovered {jumprelu['recov']:.1%}",
            f"{topk['recov']:.1%}",
        )
    return out


def print_targets(rows: list[dict]) -> None:
    """One line per cell, budget and seed that has both a JumpReLU and a TopK row."""
    by = {(r["cell"], r["tokens"], r["seed"], r["family"]): r for r in rows}
    lines = []
    for (cell, tokens, seed, family), r in by.items():
        topk = by.get((cell, tokens, seed, "topk"))
        if family == "jumprelu" and topk is not None:
            lines.append((cell, r["half"], tokens, seed, targets(r, topk)))
    if not lines:
        return
    names = list(lines[0][4])
    print("\nJumpReLU against the targets (TopK at the same L0 and tokens):\n")
    print("| cell | half | tokens | seed | " + " | ".join(names) + " |")
    print("|" + "---|" * (4 + len(names)))
    for cell, half, tokens, seed, t in lines:
        cells = [cell, half, f"{tokens / 1e6:.0f}M", str(seed), *t.values()]
        print("| " + " | ".join(cells) + " |")


def seed_spread(rows: list[dict]) -> list[dict]:
    """Per cell, tokens, family and variant run at two or more seeds: the seeds, and the mean,
    lowest and highest of L0, FVU, dead and recovered. The seed changes the SAE's initialisation
    and batch order, and on the synthetic tune cells the generator's draw too (their data.seed
    follows it; the held-out ones fix theirs). The spread is what one run of a recipe varies by:
    a difference between recipes smaller than it is not evidence."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["cell"], r["tokens"], r["family"], r["variant"]), []).append(r)
    out = []
    for (cell, tokens, family, variant), group in groups.items():
        seeds = sorted({r["seed"] for r in group})
        if len(seeds) < 2:
            continue
        stats = {}
        for key in ("L0", "FVU", "dead", "recov"):
            values = [r[key] for r in group if r.get(key) is not None]
            if values:
                stats[key] = (sum(values) / len(values), min(values), max(values))
        out.append(
            {"cell": cell, "tokens": tokens, "family": family, "variant": variant}
            | {"seeds": seeds, **stats}
        )
    return out


def print_seed_spread(rows: list[dict]) -> None:
    spread = seed_spread(rows)
    if not spread:
        return
    keys = [("L0", ".1f"), ("FVU", ".4f"), ("dead", ".1%"), ("recov", ".1%")]
    print("\nAcross seeds (mean, lowest-highest):\n")
    print("| cell | tokens | family | seeds | " + " | ".join(k for k, _ in keys) + " |")
    print("|" + "---|" * (4 + len(keys)))
    for g in spread:
        label = g["family"] + (f":{g['variant']}" if g["variant"] else "")
        cells = [g["cell"], f"{g['tokens'] / 1e6:.0f}M", label, ",".join(map(str, g["seeds"]))]
        for key, spec in keys:
            if key in g:
                mean, low, high = g[key]
                cells.append(f"{mean:{spec}} ({low:{spec}}-{high:{spec}})")
            else:
                cells.append("-")
        print("| " + " | ".join(cells) + " |")


def load_results(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def append_result(path: Path, r: dict) -> None:
    """One JSON line, flushed and fsynced: a run that finished is never lost to a stop."""
    with open(path, "a") as f:
        f.write(json.dumps(r) + "\n")
        f.flush()
        os.fsync(f.fileno())


def parse_variants(items: list[str]) -> dict[str, list[str]]:
    variants = {}
    for item in items:
        name, sep, rest = item.partition("=")
        if not sep or not name:
            raise SystemExit(f"--variant {item!r}: write NAME=override1,override2")
        variants[name] = [o for o in rest.split(",") if o]
    return variants


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cells", nargs="+", choices=list(CELLS), default=list(CELLS))
    parser.add_argument("--half", choices=["tune", "heldout", "all"], default="all")
    parser.add_argument("--kinds", nargs="+", choices=["lm", "synthetic"], default=None)
    parser.add_argument("--families", nargs="+", choices=list(FAMILIES), default=list(FAMILIES))
    parser.add_argument("--budgets", nargs="+", type=float, default=[1e6, 3e6])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=OVR,OVR",
        help="named extra Hydra overrides, applied to every selected family (repeatable)",
    )
    parser.add_argument(
        "--long", action="store_true", help="synthetic cells at 30M tokens (10x the 3M budget)"
    )
    parser.add_argument(
        "--curve",
        type=int,
        default=0,
        metavar="N",
        help="validate every N steps and print each run's curve (separate runs: the validation "
        "interval is part of the recipe)",
    )
    parser.add_argument("--results", type=Path, default=RESULTS, help="JSONL of finished runs")
    parser.add_argument("--table", action="store_true", help="print the table only; run nothing")
    args = parser.parse_args(argv)

    if args.long:
        args.budgets = [3e7]
        args.kinds = ["synthetic"]
    cells = [
        c
        for c in args.cells
        if (args.half == "all" or CELLS[c][0] == args.half)
        and (args.kinds is None or CELLS[c][1] in args.kinds)
    ]
    variants = parse_variants(args.variant) or {"": []}
    if any(c.startswith("llama") for c in cells):
        # The recipe fingerprints below read the model's shape, so the model must exist first.
        from saelab.lm.pretrain import TINY_LLAMA_DIR, ensure_tiny_llama

        if not args.table:
            ensure_tiny_llama()
        elif not TINY_LLAMA_DIR.expanduser().is_dir():
            print(f"(tiny-llama's cells skipped: no model at {TINY_LLAMA_DIR}; a run builds it)")
            cells = [c for c in cells if not c.startswith("llama")]
    wanted = {}
    for b in args.budgets:
        for cell in cells:
            for family in args.families:
                for name, variant in variants.items():
                    for seed in args.seeds:
                        tokens = max(1, round(b / BATCH)) * BATCH
                        overrides, _ = overrides_for(
                            cell, family, variant, tokens, seed, args.curve
                        )
                        key = run_key(cell, family, tokens, seed, recipe(overrides))
                        wanted.setdefault(key, (cell, family, name, b, seed))
    # Rows without a recipe predate it (their defaults are unknown): history, never matched.
    done = {
        run_key(r["cell"], r["family"], r["tokens"], r["seed"], r["recipe"]): r
        for r in load_results(args.results)
        if "recipe" in r
    }

    print_header()
    if not args.table:
        for key, (cell, family, name, budget, seed) in wanted.items():
            if key in done:
                continue
            r = run(cell, family, variants[name], int(budget), seed, args.curve)
            r = {"family": family, "variant": name, **r}
            append_result(args.results, r)
            done[key] = r
            print_row(r)
    if args.curve:
        for key in wanted:
            if key in done and done[key].get("curve"):
                print_curve(done[key])
    print(f"\nAll selected results ({args.results.name}):\n")
    print_header()
    for key in wanted:
        if key in done:
            print_row(done[key])
    selected = [done[k] for k in wanted if k in done]
    print_seed_spread(selected)
    if "" in variants:
        print_targets([done[k] for k, w in wanted.items() if k in done and w[2] == ""])


if __name__ == "__main__":
    main()
