"""Site hooks read exactly what docs/maths.md §5 defines, change nothing, and clean up after themselves."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from saelab.lm.load import load_model
from saelab.lm.sites import SITES, SitePoint, capture, check_site, forward_until, layout, site_width


def _reference(model, ids, mask, site, layer):
    """Independent capture: our own hook on the module docs/maths.md §5 names, during a FULL forward."""
    block = model.model.layers[layer]
    got = {}
    if site == "resid":
        out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        return out.hidden_states[layer + 1]  # hidden_states[0] is the embedding output
    if site == "transcoder":  # the norm that feeds the MLP, then the MLP site
        norm = getattr(block, "pre_feedforward_layernorm", None) or block.post_attention_layernorm
        first = norm.register_forward_hook(lambda m, a, o: got.setdefault("in", o.clone()))
        try:
            out = _reference(model, ids, mask, "mlp", layer)
        finally:
            first.remove()
        return torch.cat([got["in"], out], dim=-1)
    if site == "attn":
        handle = block.self_attn.o_proj.register_forward_pre_hook(
            lambda m, a: got.setdefault("x", a[0].clone())
        )
    else:
        module = getattr(block, "post_feedforward_layernorm", None) or block.mlp
        handle = module.register_forward_hook(lambda m, a, o: got.setdefault("x", o.clone()))
    try:
        model(input_ids=ids, attention_mask=mask)
    finally:
        handle.remove()
    return got["x"]


def _inputs(vocab: int, batch: int = 3, seq: int = 24):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, vocab, (batch, seq), generator=g)
    mask = torch.ones_like(ids)
    mask[-1, seq // 2 :] = 0  # a right-padded row, as the packer's ragged tail
    return ids, mask


@pytest.mark.parametrize("site", SITES)
def test_gemma2_sites_match_an_independent_hook_in_a_full_forward(tiny_lm, site):
    model, _ = tiny_lm
    ids, mask = _inputs(model.config.vocab_size)
    layer = 3
    with torch.no_grad():
        expected = _reference(model, ids, mask, site, layer)
        got = forward_until(model, ids, mask, [SitePoint(site, layer)])[SitePoint(site, layer)]
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert got.shape[-1] == site_width(model, site) == (256 if site == "transcoder" else 128)


@pytest.mark.parametrize("site", SITES)
def test_llama_style_sites_match_an_independent_hook(llama_dir, site):
    model = load_model(llama_dir)
    assert layout(model) == "llama"
    ids, mask = _inputs(model.config.vocab_size)
    with torch.no_grad():
        expected = _reference(model, ids, mask, site, 1)
        got = forward_until(model, ids, mask, [SitePoint(site, 1)])[SitePoint(site, 1)]
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_one_pass_captures_several_points_and_stops_at_the_deepest(tiny_lm):
    model, _ = tiny_lm
    ids, mask = _inputs(model.config.vocab_size)
    reached = []
    handles = [
        layer.register_forward_hook(lambda m, a, o, i=i: reached.append(i))
        for i, layer in enumerate(model.model.layers)
    ]
    try:
        points = [SitePoint("mlp", 2), SitePoint("resid", 5), SitePoint("attn", 0)]
        store = forward_until(model, ids, mask, points)
    finally:
        for h in handles:
            h.remove()
    assert reached == list(range(6))  # layers 6..25 never ran
    with torch.no_grad():
        for p in points:
            torch.testing.assert_close(
                store[p], _reference(model, ids, mask, p.site, p.layer), rtol=0, atol=0
            )


def test_hooks_never_change_the_output_and_are_always_removed(tiny_lm):
    model, _ = tiny_lm
    ids, mask = _inputs(model.config.vocab_size)
    with torch.no_grad():
        clean = model(input_ids=ids, attention_mask=mask).logits
        with capture(model, [SitePoint(s, 4) for s in SITES]):
            hooked = model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(hooked, clean, rtol=0, atol=0)

    def hook_count():
        return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())

    before = hook_count()
    with pytest.raises(RuntimeError, match="boom"):
        with capture(model, [SitePoint("resid", 1)], stop_at=1):
            assert hook_count() == before + 2
            raise RuntimeError("boom")
    assert hook_count() == before
    forward_until(model, ids, mask, [SitePoint("attn", 2)])
    assert hook_count() == before


def test_bad_site_or_layer_fails_before_any_forward(tiny_lm):
    model, _ = tiny_lm
    calls = []
    handle = model.model.embed_tokens.register_forward_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(ValueError, match=r"layer=26 is out of range.*26 layers.*0\.\.25"):
            forward_until(model, torch.ones(1, 4, dtype=torch.long), None, [SitePoint("resid", 26)])
        with pytest.raises(
            ValueError, match="site='embed' is unknown: the sites are resid, mlp, attn"
        ):
            forward_until(model, torch.ones(1, 4, dtype=torch.long), None, [SitePoint("embed", 1)])
    finally:
        handle.remove()
    assert calls == []
    with pytest.raises(ValueError, match=r"layer=-1 is out of range"):
        check_site("mlp", -1, 26)


def test_unknown_layout_names_what_it_looked_for():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.attention = nn.Linear(4, 4)
            self.ffn = nn.Linear(4, 4)

    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList([Block()])

    with pytest.raises(
        ValueError, match=r"self_attn\.o_proj.*post_feedforward_layernorm.*mlp"
    ) as e:
        layout(Odd())
    assert "attention" in str(e.value) and "ffn" in str(e.value)
    with pytest.raises(ValueError, match="cannot find the decoder layers"):
        layout(nn.Linear(2, 2))
