"""Assemble the transcoders of a layer sweep into circuit-tracer's transcoder set.

    python export_transcoders.py multirun/2026-12-06/10-00-00 --out tc-set
    python export_transcoders.py outputs/run-L0 outputs/run-L1 ... --out tc-set

Then, in circuit-tracer: ``ReplacementModel.from_pretrained(<model>, "/abs/path/tc-set")``.
docs/transcoders.md says what is written and why.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders or sweep folders")
    parser.add_argument("--out", type=Path, required=True, help="the set's folder (replaced)")
    args = parser.parse_args(argv)
    from saelab.transcoder_interop import export_transcoder_set

    try:
        folder = export_transcoder_set(args.runs, args.out)
    except (ValueError, FileNotFoundError) as error:
        print(f"export_transcoders.py: {error}", file=sys.stderr)
        return 2
    print(f"circuit-tracer transcoder set: {folder.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
