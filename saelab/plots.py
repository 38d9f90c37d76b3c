"""Pictures of results: the feature-density histogram and the sparsity-fidelity (Pareto) plots.

matplotlib is imported lazily with the Agg backend so training never needs a display, and
every picture is written atomically (tmp file + rename)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    _pyplot().close(fig)
    os.replace(tmp, path)


def save_density_histogram(
    density: torch.Tensor, path: Path, title: str = "", floor: float = 1e-7
) -> None:
    """Histogram of log10(feature density) over latents, with dead latents (density 0, which
    have no logarithm) counted in the legend and the paper's 10% high-frequency line drawn."""
    plt = _pyplot()
    density = density.detach().double().cpu()
    alive = density[density > 0]
    dead = int((density == 0).sum())
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if len(alive):
        values = alive.clamp_min(floor).log10().numpy()
        ax.hist(values, bins=60, color="tab:blue", label=f"{len(alive):,} live latents")
    ax.axvline(
        -1, color="tab:red", linestyle="--", label=f"10% ({int((density > 0.1).sum()):,} above)"
    )
    ax.axvline(
        -2, color="tab:orange", linestyle=":", label=f"1% ({int((density > 0.01).sum()):,} above)"
    )
    ax.set_xlabel("log10 feature density (fraction of tokens a latent fires on)")
    ax.set_ylabel("latents")
    ax.set_title(
        f"{title}\n{dead:,} dead of {len(density):,}"
        if title
        else f"{dead:,} dead of {len(density):,}",
        fontsize=9,
    )
    ax.legend(fontsize=8)
    _save(fig, path)


def _null_formatter():
    from matplotlib.ticker import NullFormatter

    return NullFormatter()


def _scale_y(ax, ys: list[float], log_y: bool | None) -> None:
    """A log y axis when the values span more than a decade (a collapsed run would otherwise
    flatten every other curve); symlog when some are <= 0 (delta LM loss can be slightly
    negative where a site carries little), linear otherwise. ``log_y`` forces the choice."""
    positive = [y for y in ys if y > 0]
    if log_y is False or not positive:
        return
    spread = max(abs(y) for y in ys) / min(positive)
    if log_y is None and spread < 10:
        return
    if all(y > 0 for y in ys):
        ax.set_yscale("log")
    else:
        ax.set_yscale("symlog", linthresh=sorted(abs(y) for y in ys if y != 0)[len(ys) // 4])


def save_pareto_plot(
    groups: dict[str, dict[str, list[tuple[float, float]]]],
    path: Path,
    ylabel: str,
    log_y: bool | None = None,
) -> None:
    """One panel per group (e.g. a site), one line per family through its (L0, metric) points in
    order of L0; L0 on a log axis as in the paper's Figure 2; y on a log axis when it spans more
    than a decade (``log_y`` None) or as forced."""
    plt = _pyplot()
    n = max(1, len(groups))
    fig, axes = plt.subplots(1, n, figsize=(4.5 * n, 3.8), squeeze=False)
    for ax, (group, families) in zip(axes[0], sorted(groups.items())):
        for family, points in sorted(families.items()):
            points = sorted(p for p in points if all(math.isfinite(v) for v in p))
            if points:
                ax.plot(*zip(*points), marker="o", label=family)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(_null_formatter())  # minor labels overlap on short ranges
        ys = [y for pts in families.values() for _, y in pts if math.isfinite(y)]
        _scale_y(ax, ys, log_y)
        ax.set_xlabel("L0 (log scale)")
        ax.set_ylabel(ylabel)
        ax.set_title(group)
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    _save(fig, path)
