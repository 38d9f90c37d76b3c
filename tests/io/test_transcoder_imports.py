"""Gemma Scope's transcoders read the pre-MLP norm's output WITHOUT its gain (Gemma Scope's
README, "Transcoder Input/Output Clarification"); imported for saelab's transcoder site, which
holds the MLP's real input, they must compute the same outputs on the same forward."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from saelab.transcoder_interop import gemma_scope_transcoder


def _gemma_scope_npz(path, d_in=32, d_sae=48):
    g = torch.Generator().manual_seed(0)
    arrays = {
        "W_enc": torch.randn(d_in, d_sae, generator=g) * 0.3,
        "W_dec": torch.randn(d_sae, d_in, generator=g) * 0.1,
        "b_enc": torch.randn(d_sae, generator=g) * 0.1,
        "b_dec": torch.randn(d_in, generator=g) * 0.1,
        "threshold": torch.rand(d_sae, generator=g) * 0.3 + 0.05,
    }
    np.savez(path, **{k: v.numpy() for k, v in arrays.items()})
    return arrays


def test_a_gemma_scope_transcoder_reads_the_mlp_input_with_the_gain_divided_out(
    gemma2_dir, tmp_path
):
    folder, model = gemma2_dir
    t = _gemma_scope_npz(tmp_path / "params.npz")
    sae = gemma_scope_transcoder(tmp_path / "params.npz", str(folder), layer=1).eval()
    assert sae.transcoder and sae.cfg.metadata.hook_name_out == "blocks.1.hook_mlp_out"
    norm = model.model.layers[1].pre_feedforward_layernorm
    seen = {}
    handle = norm.register_forward_hook(lambda m, a, o: seen.update(resid=a[0], x=o))
    with torch.no_grad():
        model(torch.randint(0, 64, (2, 10)))
    handle.remove()
    x_hat = norm._norm(seen["resid"].float())
    pre = x_hat @ t["W_enc"] + t["b_enc"]
    theirs = (pre * (pre > t["threshold"])) @ t["W_dec"] + t["b_dec"]
    with torch.no_grad():
        torch.testing.assert_close(sae.reconstruct(seen["x"]), theirs, rtol=1e-4, atol=1e-5)


def test_gemma_scope_transcoders_need_gemma_2(llama_dir, tmp_path):
    _gemma_scope_npz(tmp_path / "params.npz")
    with pytest.raises(ValueError, match="Gemma Scope transcoders are Gemma 2's"):
        gemma_scope_transcoder(tmp_path / "params.npz", str(llama_dir), layer=0)
