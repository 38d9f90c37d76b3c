"""Collect the runs of a sweep into one table and compare families at equal sparsity.

A run is any folder holding ``metrics.json`` (written by ``saelab.runner.train``); its family
comes from Hydra's recorded config choice (``.hydra/hydra.yaml``), its sparsity knob from the
family's config, and its numbers from ``eval.json`` (held-out, reconstruction spliced into the
LM) when present, else from the final validation metrics. The comparison the paper makes
(Figure 2) is between curves, not points: families are compared at shared L0s by
interpolating each family's curve linearly in log L0.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from omegaconf import OmegaConf

from saelab.sae.registry import FAMILIES
from saelab.summary import MIN_ABLATION_COST, ablation_cost, ce_recovered_is_meaningful

METRICS = (
    "l0",
    "fvu",
    "delta_lm_loss",
    "ce_loss_recovered",
    "kl_div",
    "dead_fraction",
    "dense_1pct_fraction",
    "dense_10pct_fraction",
)


@dataclass
class Run:
    run: str
    family: str
    model: str
    site: str
    layer: int
    knob: str
    knob_value: float
    d_sae: int
    steps: int
    train_tokens: int
    eval_tokens: int
    source: str  # "eval" (held-out, spliced) or "val" (validation activations only)
    l0: float = math.nan
    fvu: float = math.nan
    delta_lm_loss: float = math.nan
    ce_loss_recovered: float = math.nan
    kl_div: float = math.nan
    dead_fraction: float = math.nan
    dense_1pct_fraction: float = math.nan
    dense_10pct_fraction: float = math.nan
    # What zero-ablating the site costs the LM (nats): CE loss recovered's denominator.
    ablation_cost: float = math.nan

    @property
    def group(self) -> str:
        return f"{self.model} {self.site}@{self.layer}"


def family_of(folder: Path) -> str:
    """The ``sae=`` choice Hydra recorded, else the exported SAE's architecture."""
    hydra_file = folder / ".hydra" / "hydra.yaml"
    if hydra_file.is_file():
        choice = OmegaConf.load(hydra_file).hydra.runtime.choices.get("sae")
        if choice:
            return choice
    cfg_file = folder / "sae" / "cfg.json"
    if cfg_file.is_file():
        return json.loads(cfg_file.read_text())["architecture"]
    raise ValueError(
        f"{folder}: cannot tell the SAE family (no .hydra/hydra.yaml and no sae/cfg.json)"
    )


def read_runs(folder: Path) -> list[Run]:
    """The runs in one run folder: one, or one per member of a several-SAE pass (``multi.saes``:
    exports in sae/<name>/, evaluations in eval/<name>/, metrics keyed <name>/...)."""
    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    metrics = json.loads((folder / "metrics.json").read_text())
    members = (config.get("multi") or {}).get("saes") or {}
    if not members:
        return [_run(folder, config, metrics, family_of(folder), config["sae"], folder, "")]
    runs = []
    for name, member in members.items():
        family = (
            metrics.get(f"{name}/family")
            or json.loads((folder / "sae" / name / "cfg.json").read_text())["architecture"]
        )
        sae = {**config["sae"], **member}
        runs.append(
            _run(
                folder / "sae" / name,
                config,
                metrics,
                family,
                sae,
                folder / "eval" / name,
                f"{name}/",
            )
        )
    return runs


def _run(
    label: Path, config: dict, metrics: dict, family: str, sae: dict, eval_dir: Path, prefix: str
) -> Run:
    data = config.get("data", {})
    # The family's sparsity knobs, in order of precedence (jumprelu: target_l0 when set, else
    # lambda); a recipe (jumprelu_paper) is its family's, recorded by the runner.
    architecture = metrics.get(f"{prefix}family", family)
    knobs = FAMILIES[architecture].sparsity_knobs if architecture in FAMILIES else ()
    knob = next((k for k in knobs if sae.get(k) is not None), "")
    eval_file = eval_dir / "eval.json"
    if eval_file.is_file():
        evaluation = json.loads(eval_file.read_text())
        values = {k: float(evaluation[k]) for k in METRICS if k in evaluation}
        cost = ablation_cost(evaluation.get("ce_clean"), evaluation.get("ce_zero_ablation"))
        if cost is not None:
            values["ablation_cost"] = cost
        source, eval_tokens = "eval", int(evaluation["tokens"])
    else:
        values = {
            k: float(metrics[f"{prefix}val/{k}"]) for k in METRICS if f"{prefix}val/{k}" in metrics
        }
        source, eval_tokens = "val", int(data.get("val_tokens", 0))
    model = (data.get("model") or {}).get(
        "name_or_path", "synthetic"
    )  # synthetic data has no model
    d_sae = sae.get("d_sae") or sae["d_in"] * sae["expansion_factor"]
    steps = int(metrics.get("steps", 0))
    return Run(
        run=str(label),
        family=family,
        model=model,
        site=str(data.get("site", "-")),
        layer=int(config.get("layer", -1)) if "site" in data else -1,
        knob=knob,
        knob_value=float(sae[knob]) if knob else math.nan,
        d_sae=int(d_sae),
        steps=steps,
        train_tokens=int(metrics.get("train_tokens", steps * int(data.get("batch_size", 0)))),
        eval_tokens=eval_tokens,
        source=source,
        **values,
    )


def collect(root: Path) -> list[Run]:
    """Every run under ``root`` (a multirun folder, or several), sorted by group, family, L0."""
    folders = sorted(p.parent for p in Path(root).rglob("metrics.json"))
    if not folders:
        raise FileNotFoundError(
            f"no runs under {root}: expected folders with metrics.json (e.g. multirun/<date>/<time>/<job>/)"
        )
    runs = [run for f in folders for run in read_runs(f)]
    return sorted(runs, key=lambda r: (r.group, r.family, r.l0))


def write_csv(runs: list[Run], path: Path) -> None:
    names = [f.name for f in fields(Run)]
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=names)
        writer.writeheader()
        writer.writerows(asdict(r) for r in runs)
    tmp.replace(path)


def interpolate_at(points: list[tuple[float, float]], l0: float) -> float:
    """A family's metric at ``l0``, linear in log L0 between its two neighbouring runs; NaN
    outside the L0 range the family covered (no extrapolation)."""
    points = sorted(p for p in points if p[0] > 0 and math.isfinite(p[0]) and math.isfinite(p[1]))
    for (x0, y0), (x1, y1) in itertools.pairwise(points):
        if x0 <= l0 <= x1:
            if x1 == x0:
                return (y0 + y1) / 2
            t = (math.log(l0) - math.log(x0)) / (math.log(x1) - math.log(x0))
            return y0 + t * (y1 - y0)
    if len(points) == 1 and points[0][0] == l0:
        return points[0][1]
    return math.nan


def shared_l0s(curves: dict[str, list[tuple[float, float]]], n: int = 3) -> list[float]:
    """n L0 values (geometric steps) inside the range EVERY family covers; empty if none."""
    ranges = [(min(x for x, _ in pts), max(x for x, _ in pts)) for pts in curves.values() if pts]
    if len(ranges) < 2:
        return []
    low, high = max(r[0] for r in ranges), min(r[1] for r in ranges)
    if not low < high:
        return []
    return [low * (high / low) ** ((i + 1) / (n + 1)) for i in range(n)]


def curves(runs: list[Run], metric: str) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """{group: {family: [(l0, metric), ...]}}."""
    out: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for r in runs:
        out.setdefault(r.group, {}).setdefault(r.family, []).append((r.l0, getattr(r, metric)))
    return out


def _fmt(value: float, digits: int = 3) -> str:
    if not math.isfinite(value):
        return "-"
    return f"{value:.{digits}g}" if value == 0 or abs(value) >= 1e-3 else f"{value:.2e}"


def _flagged(run: Run) -> bool:
    return math.isfinite(run.ablation_cost) and not ce_recovered_is_meaningful(run.ablation_cost)


def _ce_recovered(run: Run) -> str:
    return _fmt(run.ce_loss_recovered) + ("*" if _flagged(run) else "")


def _ce_recovered_note(runs: list[Run]) -> list[str]:
    costs = [r.ablation_cost for r in runs if _flagged(r)]
    if not costs:
        return []
    return [
        f"* CE loss recovered is not meaningful here: zero-ablating the site costs the LM only "
        f"{_fmt(max(costs))} nats at most (under {MIN_ABLATION_COST}), so the ratio divides by "
        "almost nothing; compare delta LM loss.",
        "",
    ]


def markdown(runs: list[Run]) -> str:
    lines = ["# Sweep report", ""]
    by_group: dict[str, list[Run]] = {}
    for r in runs:
        by_group.setdefault(r.group, []).append(r)
    for group, group_runs in sorted(by_group.items()):
        tokens = sorted({r.train_tokens for r in group_runs})
        evals = sorted({f"{r.eval_tokens:,} ({r.source})" for r in group_runs})
        lines += [
            f"## {group}",
            "",
            (
                f"{len(group_runs)} runs; training tokens {', '.join(f'{t:,}' for t in tokens)}; "
                f"evaluation tokens {', '.join(evals)}."
            ),
            "",
            "| family | knob | L0 | FVU | delta LM loss | CE recovered | dead | >10% |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in group_runs:
            lines.append(
                f"| {r.family} | {r.knob}={_fmt(r.knob_value)} | {_fmt(r.l0)} | {_fmt(r.fvu)} | "
                f"{_fmt(r.delta_lm_loss)} | {_ce_recovered(r)} | {_fmt(r.dead_fraction)} | "
                f"{_fmt(r.dense_10pct_fraction)} |"
            )
        lines.append("")
        lines += _ce_recovered_note(group_runs)
        for metric in ("delta_lm_loss", "fvu"):
            family_curves = curves(group_runs, metric)[group]
            anchors = shared_l0s(family_curves)
            if not anchors:
                continue
            families = sorted(family_curves)
            lines += [
                f"{metric} at equal L0 (interpolated in log L0 between runs; lower is better):",
                "",
                "| L0 | " + " | ".join(families) + " |",
                "|---" * (len(families) + 1) + "|",
            ]
            for l0 in anchors:
                vals = {f: interpolate_at(family_curves[f], l0) for f in families}
                best = min((v for v in vals.values() if math.isfinite(v)), default=math.nan)
                cells = [f"**{_fmt(v)}**" if v == best else _fmt(v) for v in vals.values()]
                lines.append(f"| {l0:.0f} | " + " | ".join(cells) + " |")
            lines.append("")
    return "\n".join(lines)


def write_report(root: Path, out: Path | None = None) -> dict[str, Path]:
    """runs.csv, report.md, pareto_delta_lm_loss.png and pareto_fvu.png in ``out`` (default:
    ``root``). Returns the written paths."""
    from saelab.plots import save_pareto_plot

    runs = collect(root)
    out = Path(out or root)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / "runs.csv", "markdown": out / "report.md"}
    write_csv(runs, paths["csv"])
    tmp = paths["markdown"].with_name("report.md.tmp")
    tmp.write_text(markdown(runs))
    tmp.replace(paths["markdown"])
    for metric, label in (("delta_lm_loss", "delta LM loss (nats)"), ("fvu", "FVU")):
        if any(math.isfinite(getattr(r, metric)) for r in runs):
            paths[metric] = out / f"pareto_{metric}.png"
            save_pareto_plot(curves(runs, metric), paths[metric], ylabel=label)
    return paths
