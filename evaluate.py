"""Evaluate a trained SAE on held-out text and write eval.json beside it.

    python evaluate.py outputs/<date>/<time>              # a run folder of train.py
    python evaluate.py path/to/sae --site mlp --layer 20  # an SAE folder or Gemma Scope .npz
    python evaluate.py params.npz --site transcoder --layer 20 --model google/gemma-2-2b
                                                          # a Gemma Scope transcoder
    python evaluate.py multirun/<date>/<time>             # a sweep of transcoders, one per
                                                          # layer: the replacement model

A model's own code (auto_map) runs only with --trust-remote-code, never because a run folder's
config.json asks for it.

A run's own eval.json (written by train.py, and what its summary, metrics.json, report.py and
TensorBoard show) is kept: the new evaluation goes to <run>/eval-<N>-tokens/ (or --out), and
the command prints where. --overwrite replaces the run's eval.json instead, and its eval/ keys
in metrics.json with it.

Reports L0, FVU, dead / dense fractions, relative reconstruction bias, and, with the
reconstruction spliced into the model at the site, delta LM loss, CE loss recovered and KL.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from saelab.console import is_terminal
from saelab.evaluation import evaluate_on_validation, strict
from saelab.fileio import write_json
from saelab.sae import load_sae
from saelab.targets import add_target_arguments, target_from_args


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_target_arguments(parser)
    parser.add_argument("--tokens", type=int, default=16_384, help="held-out tokens to evaluate")
    parser.add_argument("--out", type=Path, help="folder for eval.json (default: see above)")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run's own eval.json (and metrics.json's eval/ keys)",
    )
    args = parser.parse_args()
    from saelab.replacement import evaluate_sweep, is_sweep

    if is_sweep(args.path):  # every layer's transcoder at once
        try:
            results = evaluate_sweep(args.path, args.tokens, progress=is_terminal())
        except (ValueError, FileNotFoundError) as error:
            parser.error(str(error))
        print(json.dumps(strict(results), indent=2))
        print(f"written: {args.path / 'replacement_eval.json'}")
        return
    try:
        target = target_from_args(args)  # validates site, layer range, sizes
    except (ValueError, FileNotFoundError) as error:
        parser.error(str(error))
    out = output_folder(target.home, args.tokens, args.out, args.overwrite)
    sae = load_for(target)
    from saelab.evaluation import check_width_for

    try:  # an SAE given the wrong site or model: one line, before anything is written
        check_width_for(sae, target.data_cfg)
    except ValueError as error:
        parser.error(str(error))
    out.mkdir(parents=True, exist_ok=True)
    terminal = is_terminal()
    if not terminal:  # a bar in a log file is carriage returns, not progress
        print(f"evaluating on {args.tokens:,} held-out tokens", file=sys.stderr, flush=True)
    results = evaluate_on_validation(
        sae,
        target.data_cfg,
        args.tokens,
        progress=terminal,
        output_dir=out,
        extra={"sae": str(target.sae_path)},
    )
    print(json.dumps(strict(results), indent=2))
    if out == target.home and args.overwrite:
        keep_metrics_in_step(target.home / "metrics.json", results)
    print(f"written: {out / 'eval.json'}")
    print(f"written: {out / 'feature_density.png'}")


def load_for(target):
    """The SAE to evaluate. A Gemma Scope params.npz at --site transcoder is one of Gemma
    Scope's transcoders: it reads the MLP's input before the norm's gain, which is divided out
    (docs/transcoders.md)."""
    cfg = target.data_cfg
    if cfg.site == "transcoder" and target.sae_path.suffix == ".npz":
        from saelab.transcoder_interop import gemma_scope_transcoder

        return gemma_scope_transcoder(target.sae_path, cfg.model.name_or_path, cfg.layer)
    return load_sae(target.sae_path)


def output_folder(home: Path, tokens: int, out: Path | None, overwrite: bool) -> Path:
    """Where this evaluation goes: --out; else beside the SAE when nothing is there yet (or
    --overwrite); else a folder of its own, so the run's evaluation stays as it was."""
    if out is not None:
        return out
    if overwrite or not (home / "eval.json").exists():
        return home
    return home / f"eval-{tokens}-tokens"


def keep_metrics_in_step(metrics_file: Path, results: dict) -> None:
    """A run's metrics.json holds its evaluation's numbers as eval/ keys: replace them."""
    if not metrics_file.is_file():
        return
    metrics = json.loads(metrics_file.read_text())
    metrics.update(
        {
            f"eval/{k}": v
            for k, v in strict(results).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
    )
    write_json(metrics_file, metrics)
    print(f"written: {metrics_file} (eval/ keys; TensorBoard keeps the run's own)")


if __name__ == "__main__":
    main()
