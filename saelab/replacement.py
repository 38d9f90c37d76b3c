"""The replacement model (docs/transcoders.md): every MLP of the LM replaced by its layer's
transcoder at once, each reading the input the replaced layers below it produce, scored on
held-out text against the clean model and against zero-ablating every MLP:

    delta LM loss     = CE(replaced) - CE(clean)
    CE loss recovered = (CE(all MLPs zero) - CE(replaced)) / (CE(all MLPs zero) - CE(clean))
    KL                = mean over positions of KL(clean || replaced)

    python evaluate.py multirun/<date>/<time>      # a sweep of transcoder runs, one per layer

Sums run over the same contexts a single transcoder's evaluation reads (the first ``n_tokens``
kept tokens' contexts), so a one-layer "replacement" equals that layer's own spliced loss.
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import torch
from tqdm.auto import tqdm

from saelab.console import finish_bar
from saelab.evaluation import check_tokens, check_width, output, strict
from saelab.fileio import write_json
from saelab.lm.contexts import iter_token_batches, keep_mask, special_ids
from saelab.lm.sites import SitePoint
from saelab.lm.splice import _kl, next_token_loss, splice, zero_ablation

KEYS = ("ce_clean", "ce_replaced", "ce_zero_ablation", "kl_div")


@torch.no_grad()
def evaluate_replacement(saes: dict, data_cfg, n_tokens: int, progress: bool = True) -> dict:
    """``saes``: layer -> transcoder (raw activations). ``data_cfg``: the runs' data config
    (model, corpus, context length)."""
    from saelab.lm.corpus import iter_documents
    from saelab.lm.load import lm_device, load_lm

    check_tokens(n_tokens)
    m = data_cfg.model
    model, tokenizer = load_lm(m, lm_device(getattr(data_cfg, "device", "auto")))
    device = next(model.parameters()).device
    points = {layer: SitePoint("transcoder", layer) for layer in sorted(saes)}
    for layer, sae in saes.items():
        check_width(sae, model, points[layer])
        saes[layer] = sae.eval().to(device)
    drop = torch.tensor([i for i in special_ids(tokenizer).values() if i is not None])
    sums, targets, tokens = dict.fromkeys(KEYS, 0.0), 0, 0
    context = data_cfg.context_length or m.context_length
    texts = iter_documents(data_cfg.corpus, "validation")
    bar = tqdm(total=n_tokens, desc="evaluating the replacement model", disable=not progress)
    for ids, mask in iter_token_batches(tokenizer, texts, context, 8, m.prepend_bos):
        n_kept = int(keep_mask(ids, mask, tokenizer).sum())
        ids, mask = torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device)
        keep = mask.bool() & ~torch.isin(ids, drop.to(device))
        clean, clean_logits = next_token_loss(model, ids, mask)
        with ExitStack() as stack:
            for layer, sae in saes.items():
                write = lambda rows, sae=sae: output(sae, rows.float())[1]  # noqa: E731
                stack.enter_context(splice(model, points[layer], write, keep))
            replaced, replaced_logits = next_token_loss(model, ids, mask)
        with ExitStack() as stack:
            for point in points.values():
                stack.enter_context(splice(model, point, zero_ablation(point), keep))
            zero, _ = next_token_loss(model, ids, mask)
        valid = mask[:, :-1].bool() & mask[:, 1:].bool()
        kl = _kl(clean_logits[:, :-1], replaced_logits[:, :-1], valid, 256)
        n = int(valid.sum())
        for key, value in zip(KEYS, (clean, replaced, zero, kl)):
            sums[key] += float(value) * n
        targets += n
        tokens += n_kept
        bar.update(n_kept)
        if tokens >= n_tokens:
            break
    finish_bar(bar)
    ce = {key: sums[key] / max(targets, 1) for key in KEYS}
    return {
        "layers": sorted(saes),
        "lm_targets": targets,
        **ce,
        "delta_lm_loss": ce["ce_replaced"] - ce["ce_clean"],
        "ce_loss_recovered": (ce["ce_zero_ablation"] - ce["ce_replaced"])
        / (ce["ce_zero_ablation"] - ce["ce_clean"]),
        "model": m.name_or_path,
    }


def is_sweep(path: Path) -> bool:
    """A folder of several run folders (a Hydra multirun), not a run itself."""
    path = Path(path)
    return (
        path.is_dir()
        and not (path / "config.json").is_file()
        and (len(list(path.glob("*/sae/cfg.json"))) > 1)
    )


def evaluate_sweep(sweep: Path, n_tokens: int, progress: bool = True) -> dict:
    """The replacement model of a sweep of transcoder runs; writes replacement_eval.json there."""
    from saelab.targets import resolve_target
    from saelab.transcoder_interop import find_runs

    saes, data_cfg = {}, None
    for run in find_runs([sweep]):
        target = resolve_target(run)
        if target.data_cfg.site != "transcoder":
            raise ValueError(
                f"{run} trained an SAE at site {target.data_cfg.site!r}; a replacement model "
                "is built from transcoders (site=transcoder)."
            )
        layer = target.data_cfg.layer
        if layer in saes:
            raise ValueError(f"{sweep} has two transcoders for layer {layer}; keep one per layer.")
        if data_cfg is not None and target.data_cfg.model != data_cfg.model:
            raise ValueError(f"{run} was trained on another model than the sweep's other runs.")
        from saelab.sae import load_sae

        saes[layer], data_cfg = load_sae(target.sae_path), target.data_cfg
    results = evaluate_replacement(saes, data_cfg, n_tokens, progress)
    results = {"tokens_requested": n_tokens, **results}
    write_json(Path(sweep) / "replacement_eval.json", strict(results))
    return results
