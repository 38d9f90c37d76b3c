"""What an SAE on disk was trained on: a run folder of train.py (its config.json names the model,
site and layer), an SAE folder (SAELens layout) or a Gemma Scope params.npz, with command-line
flags to fill in or override. Shared by evaluate.py and browse.py so both read paths alike.

A run folder may come from anyone, so nothing in it decides whether code runs: remote code
(a model's ``auto_map`` modules) is loaded only with ``--trust-remote-code`` on the command line.
When a run's config.json asks for it without the flag, a warning names the model and the code
that would have run, and loading goes on with remote code off (a model that needs it then fails
to load, saying so)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import warnings
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
    parser.add_argument("--site", help="resid | mlp | attn | transcoder (default: the run's)")
    parser.add_argument("--layer", type=int, help="layer (default: the run's)")
    parser.add_argument(
        "--context-length", type=int, help="default: the run's, else the model config's"
    )
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="run the Python code a model folder or hub repository ships (its auto_map); only "
        "for models you trust. Never taken from a run folder's config.json",
    )


def target_from_args(args: argparse.Namespace) -> Target:
    if getattr(args, "tokens", None) is not None:
        from saelab.evaluation import check_tokens

        check_tokens(args.tokens)  # before anything loads, and before eval.json is touched
    return resolve_target(
        args.path,
        args.model,
        args.site,
        args.layer,
        args.context_length,
        trust_remote_code=args.trust_remote_code,
    )


class RemoteCodeWarning(UserWarning):
    """A run folder asked for remote code that the command line did not allow."""


def remote_code(name_or_path: str) -> list[str]:
    """What loading ``name_or_path`` with remote code would run: the ``auto_map`` entries of
    its config.json / tokenizer_config.json and the .py files of a local model folder."""
    from saelab.lm.load import resolve

    try:
        folder = Path(resolve(name_or_path))
    except OSError:
        return []
    if not folder.is_dir():  # a hub id: not inspected here (nothing is downloaded to look)
        return []
    found = []
    for name in ("config.json", "tokenizer_config.json"):
        try:
            auto_map = json.loads((folder / name).read_text()).get("auto_map") or {}
            found += [f"{name} auto_map {key} -> {value}" for key, value in auto_map.items()]
        except (OSError, ValueError, AttributeError):  # absent or not a mapping: nothing to list
            continue
    found += [str(p) for p in sorted(folder.rglob("*.py"))]
    return found


def _remote_code_decision(model: dict, trust_remote_code: bool, source: Path | None) -> dict:
    """The model config with ``trust_remote_code`` from the command line only; warns when the
    run's config asked for it (or the model ships code) and the flag was not given."""
    asked = bool(model.get("trust_remote_code"))
    name = str(model.get("name_or_path") or "tiny-gemma-2")
    if not trust_remote_code:
        code = remote_code(name)
        if asked or code:
            who = (
                f"{source} asks for trust_remote_code"
                if asked
                else f"the model {name!r} ships code"
            )
            what = "; ".join(code) or f"the auto_map modules of {name!r}, if it has any"
            warnings.warn(
                RemoteCodeWarning(
                    f"{who}, but remote code runs only with --trust-remote-code on the command "
                    f"line. Model: {name!r}; what would run: {what}. "
                    "Continuing with remote code OFF (a model that needs it will fail to load). "
                    "Pass --trust-remote-code only if you trust that code."
                ),
                stacklevel=3,
            )
    return {**model, "trust_remote_code": bool(trust_remote_code)}


def _run_config(path: Path) -> dict:
    """A run folder's config.json, or a ValueError naming it (never a bare JSON error)."""
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as error:
        raise ValueError(
            f"{path} is not a readable run config ({error}); restore it from the run's "
            ".hydra/config.yaml, or pass the SAE folder with --model, --site and --layer"
        ) from None
    data = config.get("data") if isinstance(config, dict) else None
    if not isinstance(data, dict):
        raise ValueError(
            f"{path} must hold a JSON object with a 'data' object (as train.py writes it); "
            "pass the SAE folder with --model, --site and --layer instead"
        )
    return config


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
    trust_remote_code: bool = False,
) -> Target:
    """A run folder gives model/site/layer through config.json; flags override it; a bare SAE
    folder needs --site and --layer. An SAE folder inside a run folder (``<run>/sae``) is treated
    as that run. ``trust_remote_code`` comes from the caller (the command line), never from the
    run folder."""
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
    run_cfg = _run_config(run_dir / "config.json") if run_dir else {}
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
    data["model"] = _remote_code_decision(
        dict(data.get("model") or {}),
        trust_remote_code,
        run_dir / "config.json" if run_dir else None,
    )
    if "site" not in data or "layer" not in data:
        raise ValueError(f"{path} does not say where its SAE was trained: give --site and --layer")
    # A data=stream run's config has keys of its own (buffer_tokens): keep the shared ones.
    shared = {f.name for f in dataclasses.fields(ActivationsDataConfig)}
    data = {k: v for k, v in data.items() if k in shared}
    return Target(sae_path, run_dir, ActivationsDataConfig(**data), default_out)
