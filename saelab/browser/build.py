"""From a run folder (or an SAE folder / Gemma Scope .npz) to a browser folder: find what the
SAE was trained on, scan held-out text, compute output tokens, write the site."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from saelab.browser.logits import DIRECT_SITES, direction_logits
from saelab.browser.scan import scan_latents
from saelab.browser.site import CHUNK, check_out, write_site

# What report.py writes into a sweep folder (report.md, pareto_*.png, runs.csv), looked for in
# the run folder itself and in the sweep folder above it.
REPORT_PATTERNS = ("report*.md", "pareto*.png", "pareto*.md", "runs.csv")


@dataclass
class Target:
    """What to browse: the SAE file, the run folder (if any) and the data config it implies."""

    sae_path: Path
    run_dir: Path | None
    data_cfg: object  # saelab.data.activations.ActivationsDataConfig
    default_out: Path


def resolve_target(path: Path, model: str | None = None, site: str | None = None,
                   layer: int | None = None, context_length: int | None = None) -> Target:
    """Mirror evaluate.py: a run folder gives model/site/layer through config.json; flags
    override it; a bare SAE folder needs --site and --layer. An SAE folder inside a run folder
    (``<run>/sae``) is treated as that run."""
    from saelab.data.activations import ActivationsDataConfig

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: give a run folder, an SAE folder or a .npz")
    run_dir = None
    if path.is_dir() and (path / "config.json").is_file():
        run_dir = path
    elif path.is_dir() and (path.parent / "config.json").is_file() and (path / "cfg.json").is_file():
        run_dir = path.parent
    if path.suffix == ".npz" and path.is_file():
        sae_path, default_out = path, path.with_name(f"{path.stem}-browser")
    elif run_dir is not None and (run_dir / "sae" / "cfg.json").is_file():
        sae_path = path if (path / "cfg.json").is_file() else run_dir / "sae"
        default_out = run_dir / "browser"
    elif path.is_dir() and (path / "cfg.json").is_file():
        sae_path, default_out = path, path / "browser"
    elif run_dir is not None:
        raise ValueError(f"{run_dir} is a run folder without an exported SAE (no sae/cfg.json): "
                         "did the run finish?")
    else:
        raise ValueError(
            f"{path} is neither a run folder (config.json + sae/cfg.json), an SAE folder "
            "(cfg.json + sae_weights.safetensors) nor a Gemma Scope .npz file"
        )
    run_cfg = json.loads((run_dir / "config.json").read_text()) if run_dir else {}
    if run_cfg and "site" not in run_cfg.get("data", {}):
        raise ValueError(f"{run_dir} was not trained on LM activations "
                         f"(data={run_cfg.get('data')!r}): there is no text to browse")
    data = dict(run_cfg.get("data", {}))
    if model:
        data["model"] = {**(data.get("model") or {}), "name_or_path": model}
    data.update({k: v for k, v in {"site": site, "layer": layer,
                                  "context_length": context_length}.items() if v is not None})
    if "site" not in data or "layer" not in data:
        raise ValueError(f"{path} does not say where its SAE was trained: give --site and --layer")
    return Target(sae_path, run_dir, ActivationsDataConfig(**data), default_out)


def report_links(run_dir: Path | None) -> list[tuple[str, Path]]:
    """The run's eval.json and density plot, and a sweep report in the run or its sweep folder."""
    if run_dir is None:
        return []
    links = [(name, run_dir / name) for name in ("eval.json", "feature_density.png")
             if (run_dir / name).is_file()]
    for folder in (run_dir, run_dir.parent):
        for pattern in REPORT_PATTERNS:
            links += [(f"sweep report: {p.name}", p) for p in sorted(folder.glob(pattern))]
    return links


def build_browser(target: Target, out: Path | None = None, *, n_tokens: int = 65_536,
                  top_k: int = 20, context: int = 10, logits: bool = True,
                  lm_batch_size: int = 8, chunk_size: int = CHUNK, progress: bool = True) -> dict:
    """Scan, compute output tokens, write; returns the written meta (with file sizes) and the
    output folder and seconds taken under ``out`` and ``seconds``."""
    from saelab.data.corpus import iter_documents
    from saelab.lm.load import load_model, load_tokenizer
    from saelab.lm.sites import SitePoint
    from saelab.sae import load_sae

    t0 = time.perf_counter()
    out = check_out(out or target.default_out)
    cfg, m = target.data_cfg, target.data_cfg.model
    sae = load_sae(target.sae_path)
    model = load_model(m.name_or_path, dtype=m.dtype, revision=m.revision,
                       trust_remote_code=m.trust_remote_code)
    tokenizer = load_tokenizer(m.name_or_path, revision=m.revision, trust_remote_code=m.trust_remote_code)
    point = SitePoint(cfg.site, cfg.layer)
    scan = scan_latents(sae, model, tokenizer, point, iter_documents(cfg.corpus, "validation"),
                        context_length=cfg.context_length or m.context_length, n_tokens=n_tokens,
                        top_k=top_k, context=context, lm_batch_size=lm_batch_size,
                        prepend_bos=m.prepend_bos, progress=progress)
    out_logits, note = None, "not requested (--no-logits)"
    if logits and cfg.site in DIRECT_SITES:
        out_logits, note = direction_logits(model, sae.W_dec.detach(), cfg.site), ""
    elif logits:
        note = f"not computed for site {cfg.site!r}: no direct path to the unembedding"
    eval_path = target.run_dir / "eval.json" if target.run_dir else None
    meta = {
        "model": m.name_or_path, "site": cfg.site, "layer": cfg.layer,
        "sae": str(target.sae_path), "run": str(target.run_dir) if target.run_dir else None,
        "architecture": type(sae).config_class.architecture, "d_in": sae.d_in,
        "logits_note": note,
        "eval": json.loads(eval_path.read_text()) if eval_path and eval_path.is_file() else None,
    }
    written = write_site(out, scan, tokenizer, meta, out_logits, report_links(target.run_dir),
                         chunk_size)
    return {**written, "out": str(out), "seconds": time.perf_counter() - t0}
