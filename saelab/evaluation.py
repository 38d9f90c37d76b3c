"""Evaluate an SAE on held-out text (docs/maths.md §6): sparsity and fidelity on the site's activations
(L0, FVU, feature density, relative reconstruction bias) and the effect on the language model
when the reconstruction is spliced in (delta LM loss, CE loss recovered, KL).

Sums are accumulated over tokens and over valid next-token targets, so the numbers are for the
whole evaluated set, not averages of per-batch ratios.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from saelab.console import finish_bar
from saelab.fileio import finite_or_null, write_json
from saelab.lm.contexts import iter_token_batches, keep_mask, special_ids
from saelab.lm.sites import SitePoint, capture
from saelab.lm.splice import next_token_loss, spliced_losses
from saelab.metrics import FVU, L0, FeatureDensity, RelativeReconstructionBias, density_summary
from saelab.plots import save_density_histogram

LM_KEYS = ("ce_clean", "ce_spliced", "ce_zero_ablation", "kl_div")


def evaluate_sae(
    sae: nn.Module,
    model: nn.Module,
    tokenizer,
    point: SitePoint,
    texts,
    *,
    context_length: int,
    n_tokens: int,
    lm_batch_size: int = 8,
    prepend_bos: bool = True,
    progress: bool = True,
) -> dict[str, float]:
    """``sae`` must act on RAW activations (an exported SAE, normalisation folded in)."""
    return _evaluate(
        sae,
        model,
        tokenizer,
        point,
        texts,
        context_length=context_length,
        n_tokens=n_tokens,
        lm_batch_size=lm_batch_size,
        prepend_bos=prepend_bos,
        progress=progress,
    )[0]


@torch.no_grad()
def _evaluate(
    sae,
    model,
    tokenizer,
    point,
    texts,
    *,
    context_length,
    n_tokens,
    lm_batch_size,
    prepend_bos,
    progress,
) -> tuple[dict[str, float], torch.Tensor]:
    """evaluate_sae's results and the per-latent feature density [d_sae]."""
    check_tokens(n_tokens)
    check_width(sae, model, point)
    device = next(model.parameters()).device  # the SAE and the sums go where the LM runs
    sae = sae.eval().to(device)
    l0, fvu = L0().to(device), FVU(sae.d_in).to(device)
    density = FeatureDensity(sae.d_sae).to(device)
    bias = RelativeReconstructionBias().to(device)
    drop = [i for i in special_ids(tokenizer).values() if i is not None]
    sums = dict.fromkeys(LM_KEYS, 0.0)
    targets = tokens = 0

    def reconstruct(rows):
        return output(sae, rows.float())[1]

    bar = tqdm(
        total=n_tokens,
        desc=f"evaluating {point.site}@{point.layer}",
        unit="tok",
        disable=not progress,
    )
    for ids, mask in iter_token_batches(
        tokenizer, texts, context_length, lm_batch_size, prepend_bos
    ):
        keep = torch.from_numpy(keep_mask(ids, mask, tokenizer)).to(device)
        # The SAE's own metrics read exactly the first n_tokens kept positions, in the row order
        # of the activation cache, so at n_tokens = data.val_tokens they are computed on the
        # very rows the validation batches hold (docs/maths.md §6). The LM metrics need whole
        # contexts: they cover every context those rows sit in.
        keep = keep & (keep.flatten().cumsum(0) <= n_tokens - tokens).view_as(keep)
        ids, mask = torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device)
        # One clean forward gives both the site's activations and the clean logits.
        with capture(model, [point]) as store:
            clean = next_token_loss(model, ids, mask)
        f, x_hat, x = output(sae, store[point][keep].float())
        l0.update(f), fvu.update(x, x_hat), density.update(f), bias.update(x, x_hat)
        lm = spliced_losses(model, point, reconstruct, ids, mask, drop, clean=clean)
        n = int((mask[:, :-1].bool() & mask[:, 1:].bool()).sum())
        for key in LM_KEYS:
            sums[key] += float(lm[key]) * n
        targets += n
        tokens += int(keep.sum())
        bar.update(int(keep.sum()))
        if tokens >= n_tokens:
            break
    finish_bar(bar)
    if tokens == 0:
        raise ValueError(
            "no tokens to evaluate: the corpus split is empty or shorter than one context"
        )
    ce = {key: sums[key] / targets for key in LM_KEYS}
    dens = density.compute().cpu()
    results = {
        "tokens": tokens,
        "lm_targets": targets,
        "l0": float(l0.compute()),
        "fvu": float(fvu.compute()),
        "relative_reconstruction_bias": float(bias.compute()),
        **{k: float(v) for k, v in density_summary(dens).items()},
        **ce,
        "delta_lm_loss": ce["ce_spliced"] - ce["ce_clean"],
        "ce_loss_recovered": (ce["ce_zero_ablation"] - ce["ce_spliced"])
        / (ce["ce_zero_ablation"] - ce["ce_clean"]),
    }
    return results, dens


def output(sae, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(features, what the SAE writes, what it should write) for the site's rows: an SAE
    reconstructs its input; a transcoder reads the rows' input half and writes their output
    half (with its skip)."""
    if not getattr(sae, "transcoder", False):
        f = sae.encode(rows)
        return f, sae.decode(f), rows
    x, y = sae.split(rows)
    f = sae.encode(x)
    return f, sae.add_skip(sae.decode(f), x), y


def check_tokens(n_tokens) -> None:
    """A positive number of held-out tokens (evaluate.py's ``--tokens``): fewer would evaluate
    nothing and still overwrite eval.json."""
    if isinstance(n_tokens, bool) or not isinstance(n_tokens, int) or n_tokens <= 0:
        raise ValueError(
            f"--tokens={n_tokens!r} is invalid: the number of held-out tokens must be an "
            "integer > 0 (e.g. --tokens 16384)."
        )


def check_width(sae, model, point: SitePoint) -> None:
    """The SAE reads activations as wide as the site's: else it was trained on another site or
    model, and splicing it in would fail deep inside a matmul."""
    from saelab.lm.sites import site_width

    name = getattr(getattr(model, "config", None), "_name_or_path", "the model")
    _check_reads(sae, point, site_width(model, point.site), name)


def check_width_for(sae, data_cfg) -> None:
    """``check_width`` before the model loads: the width read from the model's config."""
    from saelab.lm.shape import model_shape

    width = model_shape(data_cfg.model).width(data_cfg.site)
    point = SitePoint(data_cfg.site, data_cfg.layer)
    _check_reads(sae, point, width, data_cfg.model.name_or_path)


def _check_reads(sae, point: SitePoint, width: int, name: str) -> None:
    transcoder = bool(getattr(sae, "transcoder", False))
    if transcoder != (point.site == "transcoder"):
        raise ValueError(
            f"the {'transcoder' if transcoder else 'SAE'} cannot be evaluated at site "
            f"{point.site!r}: a transcoder stands in for an MLP (site transcoder) and an SAE "
            "reconstructs resid, mlp or attn. Give the site it was trained on (--site)."
        )
    if transcoder:
        width //= 2  # rows are [input | output]
    if sae.d_in != width:
        raise ValueError(
            f"the SAE reads d_in={sae.d_in} but the {point.site} site of {name} (layer "
            f"{point.layer}) is {width} wide: the SAE was trained on another model or site. "
            "Give the model and site it was trained on (--model, --site, --layer)."
        )


def strict(results: dict) -> dict:
    """The results with undefined numbers (NaN/inf) as null plus the reason: strict JSON."""
    return finite_or_null(results, "undefined on the evaluated tokens (e.g. a zero denominator)")


def evaluate_on_validation(
    sae: nn.Module,
    data_cfg,
    n_tokens: int,
    progress: bool = True,
    output_dir=None,
    extra: dict | None = None,
) -> dict[str, float]:
    """Evaluate on the corpus's validation split at the site, layer, model and context length of
    an ``ActivationsDataConfig`` (the data a run trained on). With ``output_dir``, writes
    eval.json (results + ``extra``) and feature_density.png there."""
    from saelab.lm.corpus import iter_documents
    from saelab.lm.load import lm_device, load_lm

    check_tokens(n_tokens)  # before the model loads
    m = data_cfg.model
    model, tokenizer = load_lm(m, lm_device(getattr(data_cfg, "device", "auto")))
    results, density = _evaluate(
        sae,
        model,
        tokenizer,
        SitePoint(data_cfg.site, data_cfg.layer),
        iter_documents(data_cfg.corpus, "validation"),
        context_length=data_cfg.context_length or m.context_length,
        n_tokens=n_tokens,
        prepend_bos=m.prepend_bos,
        lm_batch_size=getattr(data_cfg, "lm_batch_size", 8),
        progress=progress,
    )
    results = {
        **results,
        "model": m.name_or_path,
        "site": data_cfg.site,
        "layer": data_cfg.layer,
        **(extra or {}),
    }
    if output_dir is not None:
        output_dir = Path(output_dir)
        write_json(output_dir / "eval.json", strict(results))
        save_density_histogram(
            density,
            output_dir / "feature_density.png",
            title=f"{m.name_or_path} {data_cfg.site}@{data_cfg.layer}, {results['tokens']:,} tokens",
        )
    return results
