"""Output tokens of a decoder direction: the gain read off the final norm reproduces what the
real model's final norm and LM head do to a small push along the direction."""

from __future__ import annotations

import pytest
import torch

from saelab.browser.logits import direction_logits, final_norm, norm_gain


def test_norm_gain_is_gemma_one_plus_weight(lm):
    model, _ = lm
    norm = final_norm(model)
    assert norm is model.model.norm
    g = norm_gain(norm, 128)
    # Gemma's RMSNorm scales by (1 + weight); a ones vector has rms 1 (up to the norm's eps).
    torch.testing.assert_close(g, 1 + norm.weight.float(), rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_direction_effect_matches_the_real_head_on_a_small_push(lm):
    """Push a real final residual h by eps * d and read the model's own logits (final norm,
    lm_head, soft-capping). The change points the way W_U (g * d) does, up to a positive factor
    (1 / rms(h)) and the small terms logits.py's docstring lists, which is what the browser
    claims."""
    model, tok = lm
    ids = tok("def read(self, path):\n    return open(path).read()", return_tensors="pt")[
        "input_ids"
    ]
    # The residual entering the final norm (HF's hidden_states[-1] is already normed).
    store = {}
    handle = model.model.norm.register_forward_pre_hook(lambda m, a: store.setdefault("h", a[0]))
    model(input_ids=ids)
    handle.remove()
    h = store["h"][0, -1]
    W_dec = torch.nn.functional.normalize(torch.randn(3, 128), dim=1)
    up, up_vals, down, down_vals = direction_logits(model, W_dec, "resid", top_n=5)
    cap = model.config.final_logit_softcapping

    def logits(x):
        z = model.lm_head(model.model.norm(x))
        return cap * torch.tanh(z / cap) if cap else z

    base = logits(h)
    for i in range(3):
        delta = logits(h + 1e-3 * h.norm() * W_dec[i]) - base
        effect = model.lm_head.weight.float() @ (norm_gain(model.model.norm, 128) * W_dec[i])
        corr = torch.corrcoef(torch.stack([delta, effect]))[0, 1]
        assert corr > 0.95, corr
        assert set(delta.topk(5).indices.tolist()) & set(up[i].tolist())
        assert set((-delta).topk(5).indices.tolist()) & set(down[i].tolist())
        assert (up_vals[i][:-1] >= up_vals[i][1:]).all() and (
            down_vals[i][:-1] <= down_vals[i][1:]
        ).all()


def test_attn_site_has_no_direct_direction(lm):
    model, _ = lm
    with pytest.raises(ValueError, match="no direct unembedding direction"):
        direction_logits(model, torch.zeros(2, 128), "attn")


def test_width_mismatch_is_a_clear_error(lm):
    model, _ = lm
    with pytest.raises(ValueError, match="width 64 but the model's d_model is 128"):
        direction_logits(model, torch.zeros(2, 64), "mlp")
