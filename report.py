"""Collect every run of a sweep into a table and draw the sparsity-fidelity (Pareto) plots.

    python train.py -m +experiment=paper_pareto        # the sweep (multirun/<date>/<time>/<job>/)
    python report.py multirun/<date>/<time>            # -> runs.csv, report.md, pareto_*.png

Writes into the sweep folder (or --out): runs.csv (one row per run), report.md (a table per
model/site/layer and each family's delta LM loss and FVU interpolated at shared L0s), and
pareto_delta_lm_loss.png / pareto_fvu.png (one panel per site, one line per family, log L0).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from saelab.report import write_report


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "root", type=Path, help="a multirun folder (or any folder holding run folders)"
    )
    parser.add_argument("--out", type=Path, help="where to write the report (default: root)")
    args = parser.parse_args()
    if not args.root.is_dir():
        parser.error(f"{args.root} is not a folder")
    try:
        paths = write_report(args.root, args.out)
    except FileNotFoundError as error:
        parser.error(str(error))
    print((paths["markdown"]).read_text())
    for path in paths.values():
        print(f"written: {path}")


if __name__ == "__main__":
    main()
