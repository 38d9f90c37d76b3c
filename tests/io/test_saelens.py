"""Export/import round trip in the SAELens layout, for every family."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from saelab.io import save_sae
from saelab.sae import load_sae
from tests.conftest import FAMILIES, make_sae


@pytest.mark.parametrize("arch", FAMILIES)
def test_round_trip_gives_identical_encodings(arch, tmp_path):
    sae = make_sae(arch).eval()
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(0.05 * torch.randn_like(p))
    if arch == "batchtopk":
        sae.threshold.fill_(0.3)
    save_sae(sae, tmp_path / "sae")
    cfg = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    assert cfg["architecture"] == arch and cfg["d_in"] == 16 and cfg["d_sae"] == 64
    tensors = load_file(str(tmp_path / "sae" / "sae_weights.safetensors"))
    assert tensors["W_enc"].shape == (16, 64) and tensors["W_dec"].shape == (64, 16)
    if arch == "jumprelu":
        torch.testing.assert_close(tensors["threshold"], sae.threshold.detach())  # theta, not log
    loaded = load_sae(tmp_path / "sae").eval()
    assert type(loaded) is type(sae)
    x = torch.randn(32, 16) * 3
    torch.testing.assert_close(loaded.encode(x), sae.encode(x))
    torch.testing.assert_close(loaded(x).x_hat, sae(x).x_hat)


def test_load_missing_folder_says_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="cfg.json is missing"):
        load_sae(tmp_path)


def test_export_overwrites_atomically(tmp_path):
    sae = make_sae("relu")
    save_sae(sae, tmp_path / "sae")
    save_sae(sae, tmp_path / "sae")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sae"], "no temporary folders left behind"
