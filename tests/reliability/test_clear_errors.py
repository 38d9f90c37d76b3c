"""Inputs that used to end in an unclear error or be accepted silently: an SAE of another width
than the site, --tokens 0, a damaged run config.json, a model folder of pickled weights only,
a self-linking SAE path. Each is one error naming the file, field or flag and the fix."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from saelab.evaluation import evaluate_on_validation
from saelab.io import save_sae
from saelab.lm.load import EMBEDDED, ModelLoadError, load_model
from saelab.sae import load_sae
from saelab.targets import resolve_target
from tests.conftest import make_sae, run_script


@pytest.fixture
def sae_folder(tmp_path) -> Path:
    """An exported SAE 16 wide: narrower than any site of tiny-gemma-2."""
    return save_sae(make_sae("relu", d_in=16), tmp_path / "sae", metadata={"model_name": "x"})


def test_an_sae_of_another_width_than_the_site_is_refused_naming_both(sae_folder):
    target = resolve_target(sae_folder, site="resid", layer=1)
    with pytest.raises(ValueError, match=r"d_in=16 but the resid site of .* is \d+ wide"):
        evaluate_on_validation(
            load_sae(sae_folder), target.data_cfg, 64, progress=False, output_dir=sae_folder
        )
    assert not (sae_folder / "eval.json").exists()


@pytest.mark.parametrize("tokens", [0, -5])
def test_no_tokens_to_evaluate_is_refused_before_anything_loads(sae_folder, tokens):
    target = resolve_target(sae_folder, site="resid", layer=1)
    with pytest.raises(ValueError, match=rf"--tokens={tokens} is invalid"):
        evaluate_on_validation(load_sae(sae_folder), target.data_cfg, tokens, progress=False)


def test_evaluate_py_refuses_tokens_0_and_keeps_eval_json(sae_folder, capsys):
    (sae_folder / "eval.json").write_text('{"fvu": 0.1}')
    code = run_script(
        "evaluate.py", str(sae_folder), "--site", "resid", "--layer", "1", "--tokens", "0"
    )
    err = capsys.readouterr().err
    assert code != 0 and "--tokens=0 is invalid" in err, err[-2000:]
    assert (sae_folder / "eval.json").read_text() == '{"fvu": 0.1}'


@pytest.mark.parametrize("text", ['{"data": {"site": "resid",', "[1, 2]", '{"data": 3}'])
def test_a_damaged_run_config_names_the_file(tmp_path, text):
    run = tmp_path / "run"
    save_sae(make_sae("relu"), run / "sae")
    (run / "config.json").write_text(text)
    with pytest.raises(ValueError, match=rf"{run / 'config.json'}"):
        resolve_target(run)


def test_a_model_folder_of_pickled_weights_only_says_so(tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(EMBEDDED["tiny-gemma-2"], folder)
    (folder / "model.safetensors").unlink()
    torch.save({"w": torch.zeros(2)}, folder / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match=r"only pickled weights \(pytorch_model\.bin\)"):
        load_model(folder)


def test_a_self_linking_sae_path_is_reported_as_a_loop(tmp_path):
    link = tmp_path / "sae"
    link.symlink_to(link)
    with pytest.raises(FileNotFoundError, match=r"sae is a symbolic link that loops"):
        load_sae(link)
