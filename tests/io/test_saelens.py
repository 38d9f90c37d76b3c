"""saelab's exports against SAELens's loading contract, written out here as SAELens 6.54's source
states it, so CI checks it offline without the package:

- sae_lens/__init__.py registers the inference classes by name (``register_sae_class``);
  ``batchtopk`` and ``matryoshka_batchtopk`` are registered for training only, so
  ``SAE.load_from_disk`` has no class for them.
- sae_lens/loading/pretrained_sae_loaders.py: ``read_sae_components_from_disk`` reads
  ``cfg_dict["dtype"]``; ``handle_config_defaulting`` parses a cfg as the current (>= 6) layout
  only when ``metadata.sae_lens_version`` (or a top-level one) says so, else it rebuilds
  ``metadata`` from top-level keys; both default ``apply_b_dec_to_input`` to True.
- sae_lens/saes/sae.py: ``SAEConfig`` requires d_in and d_sae; ``load_state_dict`` is strict;
  ``process_sae_in`` computes ``x - b_dec * apply_b_dec_to_input``.
- sae_lens/saes/{standard,gated,jumprelu,topk}_sae.py: the tensors each class creates and its
  encode; ``TopKSAEConfig.k`` defaults to 100 and is read from the top level.

The encoders below are those formulas, applied to the exported tensors; saelab's SAE must give
the same numbers.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from saelab.io import save_sae
from saelab.sae import load_sae
from tests.conftest import FAMILIES, make_sae, trained_like

SAELENS_INFERENCE = {
    "standard",
    "gated",
    "topk",
    "abstopk",
    "jumprelu",
    "transcoder",
    "skip_transcoder",
    "jumprelu_transcoder",
    "jumprelu_skip_transcoder",
    "temporal",
    "matching_pursuit",
}
TENSORS = {  # name -> shape, in (d_in, d_sae) symbols
    "standard": {"W_enc": "ie", "b_enc": "e", "W_dec": "ei", "b_dec": "i"},
    "gated": {
        "W_enc": "ie",
        "W_dec": "ei",
        "b_dec": "i",
        "b_gate": "e",
        "b_mag": "e",
        "r_mag": "e",
    },
    "jumprelu": {"W_enc": "ie", "b_enc": "e", "W_dec": "ei", "b_dec": "i", "threshold": "e"},
    "topk": {"W_enc": "ie", "b_enc": "e", "W_dec": "ei", "b_dec": "i"},
}
REQUIRED = {"architecture": str, "d_in": int, "d_sae": int, "dtype": str}
# What each saelab family must be written as (BatchTopK: the JumpReLU SAE it is at inference).
EXPECTED_ARCHITECTURE = {
    "relu": "standard",
    "gated": "gated",
    "jumprelu": "jumprelu",
    "topk": "topk",
    "batchtopk": "jumprelu",
    "matryoshka": "jumprelu",
    "matryoshka_jumprelu": "jumprelu",
}


def saelens_encode(cfg: dict, t: dict, x: torch.Tensor) -> torch.Tensor:
    sae_in = x - t["b_dec"] * cfg.get("apply_b_dec_to_input", True)
    arch = cfg["architecture"]
    if arch == "gated":
        gate = (sae_in @ t["W_enc"] + t["b_gate"] > 0).float()
        return gate * F.relu(sae_in @ (t["W_enc"] * t["r_mag"].exp()) + t["b_mag"])
    pre = sae_in @ t["W_enc"] + t["b_enc"]
    if arch == "standard":
        return F.relu(pre)
    if arch == "jumprelu":
        return F.relu(pre) * (pre > t["threshold"]).float()
    if arch == "topk":
        if cfg.get("rescale_acts_by_decoder_norm", False):
            pre = pre * t["W_dec"].norm(dim=-1)
        values, indices = pre.topk(cfg.get("k", 100), dim=-1, sorted=False)
        return torch.zeros_like(pre).scatter(-1, indices, F.relu(values))
    raise AssertionError(arch)


def saelens_decode(cfg: dict, t: dict, f: torch.Tensor) -> torch.Tensor:
    if cfg.get("rescale_acts_by_decoder_norm", False):
        f = f / t["W_dec"].norm(dim=-1)
    return f @ t["W_dec"] + t["b_dec"]


@pytest.mark.parametrize("family", FAMILIES)
def test_export_meets_the_saelens_loading_contract(family, tmp_path):
    sae = trained_like(family)
    meta = {"model_name": "gpt2", "hook_name": "blocks.3.hook_resid_post", "hook_layer": 3}
    save_sae(sae, tmp_path / "sae", metadata=meta)
    cfg = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    tensors = load_file(str(tmp_path / "sae" / "sae_weights.safetensors"))

    arch = cfg["architecture"]
    assert arch == EXPECTED_ARCHITECTURE[family] and arch in SAELENS_INFERENCE
    for key, kind in REQUIRED.items():
        assert isinstance(cfg[key], kind), key
    assert (cfg["d_in"], cfg["d_sae"]) == (16, 64)
    assert isinstance(cfg["apply_b_dec_to_input"], bool), "SAELens defaults a missing one to True"
    assert cfg["normalize_activations"] == "none"
    assert int(cfg["metadata"]["sae_lens_version"].split(".")[0]) >= 6
    assert {k: cfg["metadata"][k] for k in meta} == meta
    if arch == "topk":
        assert cfg["k"] == sae.cfg.k, "without a top-level k SAELens uses 100"

    dims = {"i": 16, "e": 64}
    expected = {name: tuple(dims[c] for c in s) for name, s in TENSORS[arch].items()}
    assert {k: tuple(v.shape) for k, v in tensors.items()} == expected  # strict load

    x = torch.randn(48, 16) * 3
    f = saelens_encode(cfg, tensors, x)
    assert 0 < (f > 0).sum(-1).float().mean() < 64, "the comparison must exercise the sparsity"
    torch.testing.assert_close(sae.encode(x), f)
    reference = sae.export_form()
    torch.testing.assert_close(reference.decode(f), saelens_decode(cfg, tensors, f))


@pytest.mark.parametrize("family", FAMILIES)
def test_round_trip_gives_identical_encodings(family, tmp_path):
    sae = trained_like(family)
    save_sae(sae, tmp_path / "sae", metadata={"hook_name": "blocks.1.hook_mlp_out"})
    loaded = load_sae(tmp_path / "sae").eval()
    assert type(loaded) is type(sae.export_form())
    assert loaded.cfg.metadata.hook_name == "blocks.1.hook_mlp_out"
    x = torch.randn(32, 16) * 3
    torch.testing.assert_close(loaded.encode(x), sae.encode(x))
    torch.testing.assert_close(loaded(x).x_hat, sae.export_form()(x).x_hat)
    # A loaded SAE keeps its metadata when saved again.
    save_sae(loaded, tmp_path / "again")
    cfg = json.loads((tmp_path / "again" / "cfg.json").read_text())
    assert cfg["metadata"]["hook_name"] == cfg["hook_name"] == "blocks.1.hook_mlp_out"


def test_attention_sae_is_marked_for_hook_z_reshaping(tmp_path):
    save_sae(make_sae("relu"), tmp_path / "sae", metadata={"hook_name": "blocks.2.attn.hook_z"})
    cfg = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    assert cfg["reshape_activations"] == "hook_z"


def test_non_finite_weights_are_never_written(tmp_path):
    sae = make_sae("relu")
    with torch.no_grad():
        sae.W_dec[3, 2] = float("nan")
    with pytest.raises(ValueError, match="W_dec holds 1 non-finite"):
        save_sae(sae, tmp_path / "sae")
    assert not list(tmp_path.iterdir())


def test_export_overwrites_atomically(tmp_path):
    sae = make_sae("relu")
    save_sae(sae, tmp_path / "sae")
    save_sae(sae, tmp_path / "sae")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sae"], "no temporary folders left behind"
