"""A crafted run folder cannot make evaluate.py or browse.py run code: its config.json asks for
trust_remote_code and points at a model folder whose auto_map names a module that writes a
marker file when imported. Without --trust-remote-code the marker is never written, a warning
names the model and the code, and the run goes on with the library's own model class."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from saelab.io import save_sae
from saelab.lm.load import EMBEDDED
from saelab.targets import RemoteCodeWarning, resolve_target
from tests.conftest import compose_config
from tests.scale.helpers import ROOT
from tests.test_evaluation import identity_sae

EVIL = """
import pathlib
pathlib.Path({marker!r}).write_text("code from the model folder ran")
from transformers import Gemma2Config as EvilConfig, Gemma2ForCausalLM as EvilModel
"""


@pytest.fixture
def crafted(tmp_path) -> tuple[Path, Path]:
    """(run folder, marker path): a shared run folder as an attacker would prepare it."""
    marker = tmp_path / "MARKER"
    model = tmp_path / "model"
    model.mkdir()
    for file in EMBEDDED["tiny-gemma-2"].iterdir():
        (model / file.name).symlink_to(file)
    config = json.loads((EMBEDDED["tiny-gemma-2"] / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}
    (model / "config.json").unlink()
    (model / "config.json").write_text(json.dumps(config))
    (model / "evil.py").write_text(EVIL.format(marker=str(marker)))

    run = tmp_path / "run"
    resolved = OmegaConf.to_container(compose_config([], run), resolve=True)
    resolved["data"]["model"].update(name_or_path=str(model), trust_remote_code=True)
    run.mkdir()
    (run / "config.json").write_text(json.dumps(resolved))
    save_sae(identity_sae(128), run / "sae")
    return run, marker


def test_the_run_folder_cannot_turn_remote_code_on(crafted):
    run, marker = crafted
    with pytest.warns(RemoteCodeWarning) as caught:
        target = resolve_target(run)
    assert target.data_cfg.model.trust_remote_code is False
    message = str(caught[0].message)
    assert "evil.py" in message and "auto_map AutoModelForCausalLM -> evil.EvilModel" in message
    assert str(run / "config.json") in message and "--trust-remote-code" in message
    assert not marker.exists()
    # The control: the caller's flag is the one switch, and reading the model's shape then runs
    # the folder's code, so the check above could fail.
    assert resolve_target(run, trust_remote_code=True).data_cfg.model.trust_remote_code is True
    assert marker.exists()


def _cli(script: str, run: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, script, str(run), "--tokens", "64", "--context-length", "32", *extra],
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
@pytest.mark.parametrize("script", ["evaluate.py", "browse.py"])
def test_evaluate_and_browse_never_run_the_folders_code(crafted, script, tmp_path):
    run, marker = crafted
    extra = ["--no-logits", "--out", str(tmp_path / "browser")] if script == "browse.py" else []
    done = _cli(script, run, *extra)
    assert not marker.exists(), "the run folder's code ran"
    assert done.returncode == 0, done.stderr[-3000:]
    assert "RemoteCodeWarning" in done.stderr and "evil.py" in done.stderr


@pytest.mark.slow
def test_the_crafted_folder_does_run_code_when_the_user_says_so(crafted):
    """The control: the same folder with the flag runs its code, so the test above could fail."""
    run, marker = crafted
    _cli("evaluate.py", run, "--trust-remote-code")
    assert marker.read_text() == "code from the model folder ran"
