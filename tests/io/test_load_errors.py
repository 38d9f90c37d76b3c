"""load_sae on saelab's own exports as they age, and on things that are not SAEs: every refusal
names the file, the field or what was found, and the formats accepted."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from saelab.io import save_sae
from saelab.sae import load_sae
from tests.conftest import make_sae


def export(tmp_path, family="topk"):
    sae = make_sae(family).eval()
    folder = save_sae(sae, tmp_path / "sae")
    return sae, folder


def edit_cfg(folder, change) -> None:
    path = folder / "cfg.json"
    cfg = json.loads(path.read_text())
    change(cfg)
    path.write_text(json.dumps(cfg))


def test_older_export_with_a_dropped_training_knob_still_loads(tmp_path):
    sae, folder = export(tmp_path)
    edit_cfg(folder, lambda c: c["saelab_config"].update(retired_schedule="cosine", old_lr=1e-3))
    loaded = load_sae(folder)
    x = torch.randn(8, 16)
    torch.testing.assert_close(loaded.encode(x), sae.encode(x))


def test_export_missing_a_required_field_is_refused_by_name(tmp_path):
    _, folder = export(tmp_path)
    edit_cfg(folder, lambda c: c["saelab_config"].pop("d_in"))
    with pytest.raises(ValueError, match=r"lacks the required field\(s\) \['d_in'\]"):
        load_sae(folder)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("k", "four", "k='four' is invalid: it must be int"),
        ("k", 1000, "k=1000 is invalid"),
        ("d_sae", [64], r"d_sae=\[64\] is invalid: it must be int"),
        ("architecture", "sparse", "architecture='sparse' is not a saelab family"),
    ],
)
def test_export_with_a_bad_value_is_refused_by_name(tmp_path, key, value, message):
    _, folder = export(tmp_path)
    edit_cfg(folder, lambda c: c["saelab_config"].update({key: value}))
    with pytest.raises(ValueError, match=message):
        load_sae(folder)


def test_export_whose_tensors_disagree_with_its_config_is_refused(tmp_path):
    _, folder = export(tmp_path)
    edit_cfg(folder, lambda c: c["saelab_config"].update(d_sae=32))
    with pytest.raises(
        ValueError,
        match=r"saelab_config\.d_sae=32 does not match the weights: W_enc has shape \(16, 64\)",
    ):
        load_sae(folder)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_never_load_silently(tmp_path, bad):
    _, folder = export(tmp_path, "jumprelu")
    weights = folder / "sae_weights.safetensors"
    tensors = load_file(str(weights))
    tensors["W_enc"][0, 0] = bad
    save_file(tensors, str(weights))
    with pytest.raises(ValueError, match="W_enc holds 1 non-finite value"):
        load_sae(folder)


def test_corrupt_files_are_refused_clearly(tmp_path):
    _, folder = export(tmp_path)
    (folder / "cfg.json").write_text("{not json")
    with pytest.raises(ValueError, match="cfg.json is not valid JSON"):
        load_sae(folder)
    _, folder = export(tmp_path)
    (folder / "sae_weights.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_sae(folder)


def test_anything_else_names_the_path_what_was_found_and_the_formats(tmp_path):
    with pytest.raises(
        FileNotFoundError, match="does not exist; load_sae reads a saelab or SAELens"
    ):
        load_sae(tmp_path / "nowhere")
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "model.bin").write_bytes(b"0")
    with pytest.raises(ValueError, match=r"found: model.bin, notes.txt\).*dictionary_learning"):
        load_sae(tmp_path)
    with pytest.raises(ValueError, match="notes.txt is a file saelab does not read as an SAE"):
        load_sae(tmp_path / "notes.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"found: nothing"):
        load_sae(tmp_path / "empty")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "cfg.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="sae_weights.safetensors is missing"):
        load_sae(tmp_path / "half")
