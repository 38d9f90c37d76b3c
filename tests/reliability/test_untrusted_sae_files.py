"""Attacks on exported SAE files: a cfg.json that claims sizes its tensors do not have (a
memory bomb: a 1 KB file asking for 10**12 latents), tensors of integer or bool dtype, and a
``metadata`` field of the wrong shape. Each is a ValueError naming the file and the field,
raised before anything the size of the claim is allocated."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from saelab.io import save_sae
from saelab.sae import load_sae
from tests.conftest import make_sae


def _export(folder: Path, architecture: str = "relu") -> Path:
    return save_sae(make_sae(architecture), folder, metadata={"model_name": "tiny"})


def _edit_cfg(folder: Path, edit) -> None:
    cfg = json.loads((folder / "cfg.json").read_text())
    edit(cfg)
    (folder / "cfg.json").write_text(json.dumps(cfg))


def _peak_rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/self/status")


def _reset_peak_rss() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current RSS


@pytest.mark.parametrize("architecture", ["relu", "jumprelu", "gated", "topk"])
@pytest.mark.parametrize("field", ["d_sae", "d_in"])
def test_a_cfg_claiming_a_huge_size_is_refused_before_any_allocation(tmp_path, architecture, field):
    folder = _export(tmp_path / "sae", architecture)
    _edit_cfg(folder, lambda cfg: cfg["saelab_config"].__setitem__(field, 10**12))
    _reset_peak_rss()
    before, start = _peak_rss_bytes(), time.perf_counter()
    with pytest.raises(ValueError, match=rf"saelab_config\.{field}=1000000000000") as e:
        load_sae(folder)
    elapsed, grown = time.perf_counter() - start, _peak_rss_bytes() - before
    assert str(folder / "cfg.json") in str(e.value)
    assert elapsed < 0.5 and grown < 32 * 2**20, (elapsed, grown)


def test_a_size_beyond_any_sane_bound_is_refused_naming_the_field(tmp_path):
    folder = _export(tmp_path / "sae")
    _edit_cfg(folder, lambda cfg: cfg["saelab_config"].__setitem__("d_sae", 10**40))
    with pytest.raises(ValueError, match=r"saelab_config\.d_sae=10{40} is invalid"):
        load_sae(folder)


@pytest.mark.parametrize("dtype", [torch.int32, torch.bool])
def test_integer_or_bool_weights_are_refused_naming_the_tensor(tmp_path, dtype):
    folder = _export(tmp_path / "sae")
    weights = folder / "sae_weights.safetensors"
    tensors = load_file(str(weights))
    tensors["W_dec"] = tensors["W_dec"].to(dtype)
    save_file(tensors, str(weights))
    with pytest.raises(ValueError, match=rf"{weights}: W_dec holds {str(dtype)[6:]} values"):
        load_sae(folder)


@pytest.mark.parametrize(
    "metadata", [["not", "a", "dict"], "text", {"sae": "x"}, {"cfg": 1, "model_name": "m"}]
)
def test_a_malformed_metadata_field_is_a_clear_error_or_kept(tmp_path, metadata):
    folder = _export(tmp_path / "sae")
    _edit_cfg(folder, lambda cfg: cfg.__setitem__("metadata", metadata))
    if not isinstance(metadata, dict):
        with pytest.raises(ValueError, match=rf"{folder / 'cfg.json'}: metadata must be"):
            load_sae(folder)
        return
    sae = load_sae(folder)  # any string key is kept as written, "sae" included
    for key, value in metadata.items():
        assert getattr(sae.cfg.metadata, key) == value
