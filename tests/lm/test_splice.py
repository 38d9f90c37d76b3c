"""Splicing into the real tiny-gemma-2: identity gives zero delta LM loss, a bad SAE a positive
one, and the model is unchanged afterwards (hooks removed, also on error)."""

from __future__ import annotations

import pytest
import torch

from saelab.lm.load import load_model
from saelab.lm.sites import SitePoint, forward_until
from saelab.lm.splice import splice, spliced_losses

SITES = ["resid", "mlp", "attn"]


@pytest.fixture(scope="module")
def model():
    return load_model("tiny-gemma-2")


@pytest.fixture(scope="module")
def batch():
    """Two real contexts of Python source (the model's domain), the second right-padded."""
    import inspect
    import json

    from saelab.lm.load import load_tokenizer

    tok = load_tokenizer("tiny-gemma-2")
    texts = [inspect.getsource(json.dumps)[:600], inspect.getsource(json.loads)[:400]]
    enc = tok(texts, padding="max_length", truncation=True, max_length=64, return_tensors="pt")
    assert enc["attention_mask"][1].sum() < 64 or enc["attention_mask"][0].sum() == 64
    return enc["input_ids"], enc["attention_mask"]


@pytest.mark.parametrize("site", SITES)
def test_identity_splice_changes_nothing_and_bad_reconstructions_cost_loss(model, batch, site):
    ids, mask = batch
    point = SitePoint(site, 12)
    same = spliced_losses(model, point, lambda a: a.clone(), ids, mask, special_ids=[0, 1, 2])
    assert same["delta_lm_loss"].abs() < 1e-5 and same["kl_div"].abs() < 1e-5
    # A bad "SAE" that flips the sign of the site. The mlp/attn branches of one layer of this
    # small model carry little (zero-ablating them costs ~0.03 nats), hence the low bar.
    noisy = spliced_losses(model, point, lambda a: -a, ids, mask, [0, 1, 2])
    assert noisy["delta_lm_loss"] > 0.01 and noisy["kl_div"] > 0
    assert noisy["ce_zero_ablation"] != noisy["ce_clean"]
    torch.testing.assert_close(
        noisy["ce_loss_recovered"],
        (noisy["ce_zero_ablation"] - noisy["ce_spliced"])
        / (noisy["ce_zero_ablation"] - noisy["ce_clean"]),
    )


@pytest.mark.parametrize("site", SITES)
def test_splice_replaces_only_unmasked_positions(model, batch, site):
    ids, mask = batch
    point = SitePoint(site, 3)
    keep = torch.zeros_like(mask, dtype=torch.bool)
    keep[0, 5:10] = True
    after = SitePoint("resid", 3)  # the block's output sees what the splice did
    clean = forward_until(model, ids, mask, [after])[after]
    with splice(model, point, torch.zeros_like, keep):
        spliced = forward_until(model, ids, mask, [after])[after]
    changed = (spliced - clean).abs().amax(-1) > 1e-6
    assert changed[0, 5:10].all()
    assert not changed[0, :5].any(), "causal: positions before the splice are untouched"
    assert not changed[1].any(), "the other sequence had no spliced position"


def test_hooks_are_removed_even_on_error(model, batch):
    ids, mask = batch
    before = model(input_ids=ids, attention_mask=mask).logits

    def boom(acts):
        raise RuntimeError("reconstruction failed")

    with pytest.raises(RuntimeError, match="reconstruction failed"):
        with splice(model, SitePoint("mlp", 7), boom):
            model(input_ids=ids, attention_mask=mask)
    n_hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    assert n_hooks == 0
    torch.testing.assert_close(model(input_ids=ids, attention_mask=mask).logits, before)


def test_out_of_range_layer_is_refused(model):
    with pytest.raises(ValueError, match="out of range"):
        with splice(model, SitePoint("resid", 26), lambda a: a):
            pass


def test_losses_summed_over_slices_of_positions_equal_the_whole_tensor_formulas(model, batch):
    """CE and KL are summed over float32 slices of the logits (a 256k vocabulary makes one
    float32 copy of [batch, seq, vocab] logits 8 GB); the result is the textbook formula."""
    import torch.nn.functional as F

    ids, mask = batch
    point = SitePoint("resid", 6)
    noisy = spliced_losses(model, point, lambda a: 0.5 * a, ids, mask, [0, 1, 2], chunk=7)
    targets = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)

    def ce(logits):
        return F.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]).double(), targets.reshape(-1)
        )

    clean = model(input_ids=ids, attention_mask=mask).logits
    with splice(model, point, lambda a: 0.5 * a, mask.bool() & (ids > 2)):
        spliced = model(input_ids=ids, attention_mask=mask).logits
    valid = mask[:, :-1].bool() & mask[:, 1:].bool()
    kl = (
        F.kl_div(
            spliced[:, :-1].double().log_softmax(-1),
            clean[:, :-1].double().log_softmax(-1),
            log_target=True,
            reduction="none",
        )
        .sum(-1)[valid]
        .mean()
    )
    assert noisy["ce_clean"].item() == pytest.approx(ce(clean).item(), rel=1e-5)
    assert noisy["ce_spliced"].item() == pytest.approx(ce(spliced).item(), rel=1e-5)
    assert noisy["kl_div"].item() == pytest.approx(kl.item(), rel=1e-4) and kl > 1e-3


def test_a_transcoder_splice_reads_the_mlp_input_and_replaces_only_the_mlp_output(model, batch):
    """At site=transcoder the replacement receives [MLP input | MLP output] as an independent
    full-forward hook sees them, and what it returns becomes the MLP's output: the true output
    reproduces the clean loss exactly, zeros equal zero-ablating the mlp site."""
    from tests.lm.test_sites import _reference

    ids, mask = batch
    point = SitePoint("transcoder", 12)
    seen = []

    def true_output(rows):
        seen.append(rows.clone())
        return rows[..., rows.shape[-1] // 2 :]

    same = spliced_losses(model, point, true_output, ids, mask, special_ids=[0, 1, 2])
    with torch.no_grad():
        expected = _reference(model, ids, mask, "transcoder", 12)
    torch.testing.assert_close(seen[0], expected, rtol=0, atol=0)
    assert float(same["delta_lm_loss"]) == 0.0 and float(same["kl_div"]) < 1e-6
    mlp = spliced_losses(model, SitePoint("mlp", 12), torch.zeros_like, ids, mask, [0, 1, 2])
    assert float(same["ce_zero_ablation"]) == pytest.approx(float(mlp["ce_zero_ablation"]))
    # A transcoder that writes the wrong thing costs loss.
    worse = spliced_losses(
        model, point, lambda rows: 5 * rows[..., :128], ids, mask, special_ids=[0, 1, 2]
    )
    assert float(worse["delta_lm_loss"]) > 0.01
