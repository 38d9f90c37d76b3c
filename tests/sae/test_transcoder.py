"""Transcoders as a family option: every family reads x and writes y, with or without the affine
skip; the export folds both normalisation scales exactly; the export loads in the real SAELens
(where SAELens has the architecture) and in saelab, and both compute what saelab computes."""

from __future__ import annotations

import json

import pytest
import torch

from saelab.io import save_sae
from saelab.sae import load_sae
from saelab.sae.objective import Step
from tests.conftest import (
    FAMILIES,
    make_sae,
    make_training,
    set_inference_threshold,
    train_loss,
    trained_like,
)

# SAELens 6.54's transcoder classes (saes/transcoder.py); TopK and Gated have none, and without a
# skip their transcoder is the same function as the SAE SAELens has.
SAELENS_ARCHITECTURE = {
    ("relu", False): "transcoder",
    ("relu", True): "skip_transcoder",
    ("jumprelu", False): "jumprelu_transcoder",
    ("jumprelu", True): "jumprelu_skip_transcoder",
    ("batchtopk", False): "jumprelu_transcoder",
    ("batchtopk", True): "jumprelu_skip_transcoder",
    ("matryoshka", False): "jumprelu_transcoder",
    ("matryoshka", True): "jumprelu_skip_transcoder",
    ("matryoshka_jumprelu", False): "jumprelu_transcoder",
    ("matryoshka_jumprelu", True): "jumprelu_skip_transcoder",
    ("topk", False): "topk",
    ("gated", False): "gated",
}
SKIP = [False, True]


def test_a_skip_needs_a_transcoder():
    with pytest.raises(ValueError, match="skip_connection=true needs a transcoder"):
        make_sae("topk", skip_connection=True)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_loss_reconstructs_the_target_and_trains_the_skip(family):
    sae, objective = make_training(family, transcoder=True, skip_connection=True)
    set_inference_threshold(sae, 0.3)
    x, y = torch.randn(32, 16), torch.randn(32, 16)
    with torch.no_grad():
        sae.W_skip.copy_(0.1 * torch.randn(16, 16))
    out = sae(x, objective=objective, step=Step(), target=y)
    f = out.feature_acts
    expected = ((y - (sae.decode(f) + x @ sae.W_skip.T)) ** 2).sum(-1).mean()
    torch.testing.assert_close(out.losses["mse"], expected)
    assert out.losses["mse"] != train_loss(sae, objective, x).losses["mse"]
    out.loss.backward()
    assert sae.W_skip.grad is not None and sae.W_skip.grad.abs().sum() > 0


@pytest.mark.parametrize("skip", SKIP)
@pytest.mark.parametrize("family", FAMILIES)
def test_folding_both_scales_gives_the_raw_map(family, skip):
    sae = trained_like(family, transcoder=True, skip_connection=skip)
    s_in, s_out = 7.0, 0.3
    exported = make_sae(family, transcoder=True, skip_connection=skip).eval()
    exported.load_state_dict(sae.state_dict())
    exported.fold_transcoder_scales(s_in, s_out)
    exported = exported.export_form()
    x = torch.randn(40, 16) * s_in
    with torch.no_grad():
        want = s_out * sae.reconstruct(x / s_in)
        torch.testing.assert_close(exported.reconstruct(x), want, rtol=1e-4, atol=1e-5)
        assert 0 < (exported.encode(x) > 0).sum(-1).float().mean() < 64


@pytest.mark.parametrize("skip", SKIP)
@pytest.mark.parametrize("family", FAMILIES)
def test_the_export_loads_in_saelens_and_in_saelab_and_matches(family, skip, tmp_path):
    sae = trained_like(family, transcoder=True, skip_connection=skip)
    meta = {"hook_name": "blocks.2.mlp.hook_in", "hook_name_out": "blocks.2.hook_mlp_out"}
    save_sae(sae, tmp_path / "tc", metadata=meta)
    cfg = json.loads((tmp_path / "tc" / "cfg.json").read_text())
    x = torch.randn(48, 16) * 3
    with torch.no_grad():
        want = sae.reconstruct(x)
        loaded = load_sae(tmp_path / "tc").eval()
        assert loaded.transcoder and (loaded.W_skip is not None) == skip
        torch.testing.assert_close(loaded.reconstruct(x), want)
    assert cfg["apply_b_dec_to_input"] is False and cfg["d_out"] == 16
    assert cfg["metadata"]["hook_name_out"] == "blocks.2.hook_mlp_out"
    SAE = pytest.importorskip("sae_lens").SAE
    expected = SAELENS_ARCHITECTURE.get((family, skip))
    if expected is None:  # SAELens has no TopK or Gated skip transcoder
        assert cfg["architecture"] == f"saelab_{family}_skip_transcoder"
        with pytest.raises(KeyError, match="saelab_"):  # no such class in SAELens's registry
            SAE.load_from_disk(str(tmp_path / "tc"))
        return
    assert cfg["architecture"] == expected
    theirs = SAE.load_from_disk(str(tmp_path / "tc"))
    with torch.no_grad():
        torch.testing.assert_close(theirs(x), want, rtol=1e-5, atol=1e-5)
    if "transcoder" in expected:
        assert theirs.cfg.metadata.hook_name_out == "blocks.2.hook_mlp_out"


@pytest.mark.parametrize(
    "name", ["Transcoder", "SkipTranscoder", "JumpReLUTranscoder", "JumpReLUSkipTranscoder"]
)
def test_transcoders_saved_by_saelens_load_in_saelab_and_match(name, tmp_path):
    sae_lens = pytest.importorskip("sae_lens")
    cls, config_cls = getattr(sae_lens, name), getattr(sae_lens, f"{name}Config")
    theirs = cls(config_cls(d_in=16, d_sae=48, d_out=16, apply_b_dec_to_input=False))
    with torch.no_grad():
        for p in theirs.parameters():
            p.copy_(0.3 * torch.randn_like(p))
        if hasattr(theirs, "threshold"):
            theirs.threshold.copy_(torch.rand(48) * 0.2 + 0.05)
    theirs.cfg.metadata.hook_name_out = "blocks.3.hook_mlp_out"
    theirs.save_model(tmp_path / "tc")
    ours = load_sae(tmp_path / "tc").eval()
    assert ours.transcoder and (ours.W_skip is not None) == ("Skip" in name)
    assert ours.cfg.metadata.hook_name_out == "blocks.3.hook_mlp_out"
    x = torch.randn(32, 16)
    with torch.no_grad():
        want = theirs(x)
        assert (theirs.encode(x) > 0).float().mean() > 0.05
        torch.testing.assert_close(ours.reconstruct(x), want, rtol=1e-5, atol=1e-5)
