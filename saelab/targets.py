"""What an SAE on disk was trained on: a run folder of train.py (its config.json names the model,
site and layer), an SAE folder (SAELens layout) or a Gemma Scope params.npz, with command-line
flags to fill in or override. Shared by evaluate.py and browse.py so both read paths alike."""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path


def add_target_arguments(parser: argparse.ArgumentParser) -> None:
    """The positional path and the --model/--site/--layer/--context-length flags."""
    parser.add_argument(
        "path", type=Path, help="run folder (with config.json and sae/) or SAE folder / .npz"
    )
    parser.add_argument(
        "--model", help="model name or path (default: the run's, else tiny-gemma-2)"
    )
    parser.add_argument("--site", help="resid | mlp | attn (default: the run's)")
    parser.add_argument("--layer", type=int, help="layer (default: the run's)")
    parser.add_argument(
        "--context-length", type=int, help="default: the run's, else the model config's"
    )


def target_from_args(args: argparse.Namespace) -> Target:
    return resolve_target(args.path, args.model, args.site, args.layer, args.context_length)


@dataclass
class Target:
    """What to browse: the SAE file, the run folder (if any) and the data config it implies."""

    sae_path: Path
    run_dir: Path | None
    data_cfg: object  # saelab.data.activations.ActivationsDataConfig
    default_out: Path  # where browse.py writes by default

    @property
    def home(self) -> Path:
        """Where results about this SAE go (eval.json): the run folder, else beside the SAE."""
        if self.run_dir is not None:
            return self.run_dir
        return self.sae_path if self.sae_path.is_dir() else self.sae_path.parent


def resolve_target(
    path: Path,
    model: str | None = None,
    site: str | None = None,
    layer: int | None = None,
    context_length: int | None = None,
) -> Target:
    """A run folder gives model/site/layer through config.json; flags override it; a bare SAE
    folder needs --site and --layer. An SAE folder inside a run folder (``<run>/sae``) is treated
    as that run."""
    from saelab.data.activations import ActivationsDataConfig

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"{path} does not exist: give a run folder, an SAE folder or a .npz"
        )
    run_dir = None
    if path.is_dir() and (path / "config.json").is_file():
        run_dir = path
    elif (
        path.is_dir() and (path.parent / "config.json").is_file() and (path / "cfg.json").is_file()
    ):
        run_dir = path.parent
    if path.suffix == ".npz" and path.is_file():
        sae_path, default_out = path, path.with_name(f"{path.stem}-browser")
    elif run_dir is not None and (run_dir / "sae" / "cfg.json").is_file():
        sae_path = path if (path / "cfg.json").is_file() else run_dir / "sae"
        default_out = run_dir / "browser"
    elif path.is_dir() and (path / "cfg.json").is_file():
        sae_path, default_out = path, path / "browser"
    elif run_dir is not None:
        raise ValueError(
            f"{run_dir} is a run folder without an exported SAE (no sae/cfg.json): "
            "did the run finish?"
        )
    else:
        raise ValueError(
            f"{path} is neither a run folder (config.json + sae/cfg.json), an SAE folder "
            "(cfg.json + sae_weights.safetensors) nor a Gemma Scope .npz file"
        )
    run_cfg = json.loads((run_dir / "config.json").read_text()) if run_dir else {}
    if run_cfg and "site" not in run_cfg.get("data", {}):
        raise ValueError(
            f"{run_dir} was not trained on LM activations "
            f"(data={run_cfg.get('data')!r}): there is no text to browse"
        )
    data = dict(run_cfg.get("data", {}))
    if model:
        data["model"] = {**(data.get("model") or {}), "name_or_path": model}
    data.update(
        {
            k: v
            for k, v in {"site": site, "layer": layer, "context_length": context_length}.items()
            if v is not None
        }
    )
    if "site" not in data or "layer" not in data:
        raise ValueError(f"{path} does not say where its SAE was trained: give --site and --layer")
    # A data=stream run's config has keys of its own (buffer_tokens): keep the shared ones.
    shared = {f.name for f in dataclasses.fields(ActivationsDataConfig)}
    data = {k: v for k, v in data.items() if k in shared}
    return Target(sae_path, run_dir, ActivationsDataConfig(**data), default_out)
