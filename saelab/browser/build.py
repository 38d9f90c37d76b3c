"""From a run folder (or an SAE folder / Gemma Scope .npz) to a browser folder: find what the
SAE was trained on, scan held-out text, compute output tokens, write the site."""

from __future__ import annotations

import json
import time
from pathlib import Path

from saelab.browser.logits import DIRECT_SITES, direction_logits
from saelab.browser.scan import scan_latents
from saelab.browser.site import CHUNK, check_out, write_site
from saelab.targets import Target

# What report.py writes into a sweep folder (report.md, pareto_*.png, runs.csv), looked for in
# the run folder itself and in the sweep folder above it.
REPORT_PATTERNS = ("report*.md", "pareto*.png", "pareto*.md", "runs.csv")


def report_links(run_dir: Path | None) -> list[tuple[str, Path]]:
    """The run's eval.json and density plot, and a sweep report in the run or its sweep folder."""
    if run_dir is None:
        return []
    links = [
        (name, run_dir / name)
        for name in ("eval.json", "feature_density.png")
        if (run_dir / name).is_file()
    ]
    for folder in (run_dir, run_dir.parent):
        for pattern in REPORT_PATTERNS:
            links += [(f"sweep report: {p.name}", p) for p in sorted(folder.glob(pattern))]
    return links


def build_browser(
    target: Target,
    out: Path | None = None,
    *,
    n_tokens: int = 65_536,
    top_k: int = 20,
    context: int = 10,
    logits: bool = True,
    lm_batch_size: int = 8,
    chunk_size: int = CHUNK,
    progress: bool = True,
) -> dict:
    """Scan, compute output tokens, write; returns the written meta (with file sizes) and the
    output folder and seconds taken under ``out`` and ``seconds``."""
    from saelab.lm.corpus import iter_documents
    from saelab.lm.load import load_model, load_tokenizer
    from saelab.lm.sites import SitePoint
    from saelab.sae import load_sae

    t0 = time.perf_counter()
    out = check_out(out or target.default_out)
    cfg, m = target.data_cfg, target.data_cfg.model
    sae = load_sae(target.sae_path)
    model = load_model(
        m.name_or_path, dtype=m.dtype, revision=m.revision, trust_remote_code=m.trust_remote_code
    )
    tokenizer = load_tokenizer(
        m.name_or_path, revision=m.revision, trust_remote_code=m.trust_remote_code
    )
    point = SitePoint(cfg.site, cfg.layer)
    scan = scan_latents(
        sae,
        model,
        tokenizer,
        point,
        iter_documents(cfg.corpus, "validation"),
        context_length=cfg.context_length or m.context_length,
        n_tokens=n_tokens,
        top_k=top_k,
        context=context,
        lm_batch_size=lm_batch_size,
        prepend_bos=m.prepend_bos,
        progress=progress,
    )
    out_logits, note = None, "not requested (--no-logits)"
    if logits and cfg.site in DIRECT_SITES:
        out_logits, note = direction_logits(model, sae.W_dec.detach(), cfg.site), ""
    elif logits:
        note = f"not computed for site {cfg.site!r}: no direct path to the unembedding"
    eval_path = target.run_dir / "eval.json" if target.run_dir else None
    meta = {
        "model": m.name_or_path,
        "site": cfg.site,
        "layer": cfg.layer,
        "sae": str(target.sae_path),
        "run": str(target.run_dir) if target.run_dir else None,
        "architecture": type(sae).config_class.architecture,
        "d_in": sae.d_in,
        "logits_note": note,
        "eval": json.loads(eval_path.read_text()) if eval_path and eval_path.is_file() else None,
    }
    written = write_site(
        out, scan, tokenizer, meta, out_logits, report_links(target.run_dir), chunk_size
    )
    return {**written, "out": str(out), "seconds": time.perf_counter() - t0}
