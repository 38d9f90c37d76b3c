"""evaluate_sae on the real tiny-gemma-2 and real validation text: an identity SAE gives zero
delta LM loss and FVU, a bad one positive; sparsity metrics agree with direct computations."""

from __future__ import annotations

import math

import pytest
import torch

from saelab.evaluation import evaluate_sae
from saelab.lm.corpus import iter_documents
from saelab.lm.load import load_model, load_tokenizer
from saelab.lm.sites import SitePoint
from saelab.sae import JumpReLUSAE
from saelab.sae.jumprelu import JumpReLUConfig


@pytest.fixture(scope="module")
def lm():
    return load_model("tiny-gemma-2"), load_tokenizer("tiny-gemma-2")


def identity_sae(d: int) -> JumpReLUSAE:
    """f = (relu(x), relu(-x)), x_hat = f @ [I; -I] = x, up to |x_i| below a tiny threshold."""
    sae = JumpReLUSAE(JumpReLUConfig(d_in=d, d_sae=2 * d))
    eye = torch.eye(d)
    with torch.no_grad():
        sae.log_threshold.fill_(math.log(1e-9))
        sae.W_enc.copy_(torch.cat([eye, -eye], 1))
        sae.W_dec.copy_(torch.cat([eye, -eye], 0))
    return sae


def _run(lm, sae, site="resid"):
    model, tok = lm
    return evaluate_sae(
        sae,
        model,
        tok,
        SitePoint(site, 12),
        iter_documents(None, "validation"),
        context_length=64,
        n_tokens=600,
        lm_batch_size=4,
        progress=False,
    )


@pytest.mark.slow
@pytest.mark.parametrize("site", ["resid", "attn"])
def test_identity_sae_has_zero_delta_lm_loss(lm, site):
    out = _run(lm, identity_sae(128), site)
    assert out["tokens"] == 600
    assert abs(out["delta_lm_loss"]) < 1e-4 and out["kl_div"] < 1e-4
    assert out["fvu"] < 1e-8
    assert out["ce_loss_recovered"] == pytest.approx(1.0, abs=1e-3)
    assert out["l0"] == pytest.approx(128, abs=1)  # every dim is either >0 or <0


@pytest.mark.slow
def test_bad_sae_costs_loss_and_metrics_match_direct_computation(lm):
    sae = identity_sae(128)
    with torch.no_grad():
        sae.log_threshold.fill_(torch.log(torch.tensor(2.0)))  # drop every |x_i| < 2
    out = _run(lm, sae)
    assert out["delta_lm_loss"] > 0.01 and out["kl_div"] > 0 and 0 < out["fvu"] < 1
    assert out["ce_loss_recovered"] < 1
    # L0 equals the mean number of coordinates with |x_i| > 2 (each fires exactly one latent)
    model, tok = lm
    from saelab.lm.contexts import iter_token_batches, keep_mask
    from saelab.lm.sites import forward_until

    counts, n = 0.0, 0
    for ids, mask in iter_token_batches(tok, iter_documents(None, "validation"), 64, 4):
        keep = torch.from_numpy(keep_mask(ids, mask, tok))
        point = SitePoint("resid", 12)
        x = forward_until(model, torch.from_numpy(ids), torch.from_numpy(mask), [point])[point][
            keep
        ][: 600 - n]  # exactly the first 600 kept tokens, as the evaluation reads them
        counts += float((x.abs() > 2).sum())
        n += x.shape[0]
        if n >= 600:
            break
    assert out["tokens"] == n == 600
    assert out["l0"] == pytest.approx(counts / n, rel=1e-4)


def test_the_evaluation_bar_ends_at_100_percent_of_what_it_evaluated(tiny_lm, capsys):
    """The SAE's metrics read exactly the tokens asked for, the LM's the contexts they sit in
    (more targets); the bar ends at those tokens, 100%, not past it."""
    model, tok = tiny_lm
    out = evaluate_sae(
        identity_sae(128),
        model,
        tok,
        SitePoint("resid", 1),
        ["def f(self):\n    return self.x\n" * 20] * 3,
        context_length=32,
        n_tokens=40,
        lm_batch_size=2,
    )
    last = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    assert out["tokens"] == 40 and out["lm_targets"] > 40  # one batch of 2 contexts
    assert "100%" in last and f"{out['tokens']}/{out['tokens']}" in last, last
