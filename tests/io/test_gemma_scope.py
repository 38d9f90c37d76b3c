"""Gemma Scope params.npz export/import against the format's own encoder formula."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from saelab.io import load_gemma_scope_npz, save_gemma_scope_npz
from saelab.sae import JumpReLUSAE, load_sae
from tests.conftest import make_sae


def _trained_like_jumprelu():
    sae = make_sae("jumprelu")
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(0.1 * torch.randn_like(p))
        sae.log_threshold.copy_(torch.log(torch.rand(64) * 0.5 + 0.05))
    return sae.eval()


def test_npz_round_trip_and_the_gemma_scope_encoder(tmp_path):
    sae = _trained_like_jumprelu()
    path = save_gemma_scope_npz(sae, tmp_path / "params.npz")
    with np.load(path, allow_pickle=False) as npz:
        p = {k: torch.from_numpy(npz[k]) for k in npz.files}
    assert sorted(p) == ["W_dec", "W_enc", "b_dec", "b_enc", "threshold"]
    x = torch.randn(40, 16) * 3
    z = x @ p["W_enc"] + p["b_enc"]
    gemma_scope_f = (z > p["threshold"]) * torch.relu(z)  # the format's documented encoder
    torch.testing.assert_close(sae.encode(x), gemma_scope_f)
    record = load_gemma_scope_npz(path)  # the plain record: saelab's names, theta itself
    assert record.architecture == "jumprelu" and record.config == {"d_in": 16, "d_sae": 64}
    torch.testing.assert_close(record.tensors["threshold"], p["threshold"])
    for loaded in (load_sae(path), load_sae(tmp_path)):  # the file, or a folder holding it
        assert isinstance(loaded, JumpReLUSAE)
        torch.testing.assert_close(loaded.encode(x), sae.encode(x))
        torch.testing.assert_close(loaded.decode(loaded.encode(x)), sae.decode(sae.encode(x)))


def test_only_jumprelu_exports_as_npz(tmp_path):
    with pytest.raises(ValueError, match="JumpReLU SAEs only"):
        save_gemma_scope_npz(make_sae("topk"), tmp_path / "params.npz")
    assert not list(tmp_path.iterdir()), "nothing half-written is left behind"


def test_bad_npz_files_are_refused(tmp_path):
    bad = tmp_path / "missing.npz"
    np.savez(bad, W_enc=np.zeros((4, 8), np.float32))
    with pytest.raises(ValueError, match="lacks"):
        load_gemma_scope_npz(bad)
    truncated = tmp_path / "truncated.npz"
    save_gemma_scope_npz(_trained_like_jumprelu(), truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(ValueError, match="not a readable"):
        load_gemma_scope_npz(truncated)
    nan = tmp_path / "nan.npz"
    save_gemma_scope_npz(_trained_like_jumprelu(), nan)
    with np.load(nan) as npz:
        arrays = dict(npz)
    arrays["b_enc"][5] = np.nan
    np.savez(nan, **arrays)
    with pytest.raises(ValueError, match="b_enc holds 1 non-finite"):
        load_sae(nan)
    arrays["b_enc"][5] = 0
    arrays["threshold"][0] = 0.0
    np.savez(nan, **arrays)
    with pytest.raises(ValueError, match="every threshold must be > 0"):
        load_sae(nan)
