"""The lines a finished run ends with: where it wrote, and how each SAE did.

Read from the run's final metrics (the dict written to metrics.json). Each figure is shown once,
under the source it comes from:
- the held-out evaluation (``eval/*``: held-out text with the SAE spliced into the LM, the
  numbers of eval.json, report.py and TensorBoard's ``eval/`` scalars) first, when it ran;
- the validation batches (``val/*``: the data source's validation split, as TensorBoard's
  ``val/`` curves) after it.
"""

from __future__ import annotations

from pathlib import Path

# CE loss recovered = (zero-ablated - spliced) / (zero-ablated - clean). Where zero-ablating
# the site costs the LM less than this (nats per token), the ratio divides by almost nothing
# and swings far from [0, 1] on tiny differences, so it is shown apart, with that cost.
MIN_ABLATION_COST = 0.1


def _number(value: float | None, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


def _getter(metrics: dict, prefix: str):
    def get(key: str) -> float | None:
        value = metrics.get(f"{prefix}{key}")
        return None if value is None else float(value)

    return get


def ablation_cost(ce_clean: float | None, ce_zero_ablation: float | None) -> float | None:
    """What zero-ablating the site costs the LM (nats per token): CE recovered's denominator."""
    if ce_clean is None or ce_zero_ablation is None:
        return None
    return ce_zero_ablation - ce_clean


def ce_recovered_is_meaningful(cost: float | None) -> bool:
    return cost is not None and cost >= MIN_ABLATION_COST


def _dead(value: float | None) -> str:
    return f"dead {_number(None if value is None else 100 * value, '.1f')}%"


def held_out_lines(metrics: dict, prefix: str = "") -> list[str]:
    """The held-out evaluation's figures, delta LM loss and KL first; empty if it did not run."""
    get = _getter(metrics, f"{prefix}eval/")
    if get("delta_lm_loss") is None and get("l0") is None:
        return []
    tokens = get("tokens")
    where = "" if tokens is None else f"{int(tokens):,} tokens, "
    figures = (
        f"delta LM loss {_number(get('delta_lm_loss'), '.4f')} nats  "
        f"KL {_number(get('kl_div'), '.4f')}  "
    )
    cost = ablation_cost(get("ce_clean"), get("ce_zero_ablation"))
    recovered = f"CE loss recovered {_number(get('ce_loss_recovered'), '.3f')}"
    if ce_recovered_is_meaningful(cost):
        figures += f"{recovered}  "
    figures += f"L0 {_number(get('l0'), '.1f')}  FVU {_number(get('fvu'), '.4f')}  {_dead(get('dead_fraction'))}"
    spliced = (
        "transcoder in place of the MLP"
        if f"{prefix}target_scale" in metrics
        else "SAE spliced into the LM"
    )
    lines = [
        f"held-out text, {spliced} ({where}eval.json; report.py and TensorBoard eval/ show these):",
        f"  {figures}",
    ]
    if cost is not None and not ce_recovered_is_meaningful(cost):
        lines.append(
            f"  {recovered} is not meaningful here: zero-ablating this site costs the LM only "
            f"{cost:.4f} nats (under {MIN_ABLATION_COST}), so the ratio divides by almost "
            "nothing. Read delta LM loss and KL."
        )
    return lines


def validation_lines(
    metrics: dict, prefix: str = "", held_out: bool = True, same_rows: bool = False
) -> list[str]:
    get = _getter(metrics, f"{prefix}val/")
    if not held_out:
        why = "; no held-out evaluation: it needs LM data and eval_tokens > 0"
    elif same_rows:
        why = "; the rows the evaluation's L0 and FVU read, so they agree"
    else:
        why = f"; {int(metrics.get('val_tokens', 0)):,} rows, other than the evaluation's"
    return [
        f"validation batches (metrics.json val/*, TensorBoard val/{why}):",
        f"  L0 {_number(get('l0'), '.1f')}  FVU {_number(get('fvu'), '.4f')}  "
        f"{_dead(get('dead_fraction'))}",
    ]


def member_lines(metrics: dict, prefix: str = "", same_rows: bool = False) -> list[str]:
    held_out = held_out_lines(metrics, prefix)
    return [*held_out, *validation_lines(metrics, prefix, bool(held_out), same_rows)]


def run_summary(
    output_dir: Path, metrics: dict, members: list[str], exported: bool, same_rows: bool = False
) -> str:
    """``members``: the member names of a multi-SAE run, ``[""]`` for a single SAE.
    ``same_rows``: the held-out evaluation read the validation batches' rows (its L0 and FVU
    are then theirs)."""
    output_dir = Path(output_dir)
    lines = [
        f"saelab: finished at step {int(metrics.get('steps', 0))}. Run folder: {output_dir}",
    ]
    for name in members:
        folder = output_dir / "sae" / name if name else output_dir / "sae"
        where = str(folder) if exported else "not exported (export=false)"
        label = f"{name}: " if name else ""
        prefix = f"{name}/" if name else ""
        lines.append(f"  {label}SAE {where}")
        lines += [f"    {line}" for line in member_lines(metrics, prefix, same_rows)]
    return "\n".join(lines)
