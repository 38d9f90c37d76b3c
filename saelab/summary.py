"""The lines a finished run ends with: where it wrote, and how each SAE did.

Read from the run's final metrics (the dict written to metrics.json): L0, FVU and the dead
fraction on the validation batches, and delta LM loss from the end-of-run evaluation with the
SAE spliced into the LM (absent on data without an LM, or with ``eval_tokens=0``).
"""

from __future__ import annotations

from pathlib import Path


def _number(value: float | None, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


def member_line(metrics: dict, prefix: str = "") -> str:
    def get(key: str) -> float | None:
        value = metrics.get(f"{prefix}{key}")
        return None if value is None else float(value)

    dead = get("val/dead_fraction")
    return (
        f"L0 {_number(get('val/l0'), '.1f')}  FVU {_number(get('val/fvu'), '.4f')}  "
        f"delta LM loss {_number(get('eval/delta_lm_loss'), '.4f')}  "
        f"dead {_number(None if dead is None else 100 * dead, '.1f')}%"
    )


def run_summary(output_dir: Path, metrics: dict, members: list[str], exported: bool) -> str:
    """``members``: the member names of a multi-SAE run, ``[""]`` for a single SAE."""
    output_dir = Path(output_dir)
    lines = [
        f"saelab: finished at step {int(metrics.get('steps', 0))}. Run folder: {output_dir}",
        f"  metrics: {output_dir / 'metrics.json'} (L0, FVU, dead: validation batches; "
        "delta LM loss: the SAE spliced into the LM on held-out text)",
    ]
    for name in members:
        folder = output_dir / "sae" / name if name else output_dir / "sae"
        where = str(folder) if exported else "not exported (export=false)"
        label = f"{name}: " if name else ""
        prefix = f"{name}/" if name else ""
        lines.append(f"  {label}SAE {where}\n    {member_line(metrics, prefix)}")
    return "\n".join(lines)
