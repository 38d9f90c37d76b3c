"""`python evaluate.py` on SAE files saved to disk: an identity SAE (as a SAELens folder and as a
Gemma Scope params.npz) spliced into tiny-gemma-2 costs no loss, and the run writes eval.json
and the feature-density picture beside the SAE. Two tests run it as a real program; the rest
run its ``__main__`` in the test's process (the same work and messages, one interpreter less)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import pytest
import torch

from saelab.io import save_gemma_scope_npz, save_sae
from saelab.plots import save_density_histogram
from tests.conftest import run_script
from tests.test_evaluation import identity_sae

ROOT = Path(__file__).resolve().parents[1]


def _evaluate(path: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "evaluate.py",
        str(path),
        "--tokens",
        "300",
        "--context-length",
        "64",
        *extra,
    ]
    return subprocess.run(
        cmd,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HOME": str(Path.home())},
    )


def _evaluate_here(capsys, path: Path, *extra: str) -> tuple[int, str, str]:
    """evaluate.py's ``__main__`` in this process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = run_script("evaluate.py", str(path), "--tokens", "300", "--context-length", "64", *extra)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["saelens", "gemma_scope"])
def test_evaluate_cli_on_saved_identity_sae(tmp_path, capsys, fmt):
    sae = identity_sae(128)
    path = (
        save_sae(sae, tmp_path / "sae")
        if fmt == "saelens"
        else save_gemma_scope_npz(sae, tmp_path / "params.npz")
    )
    if fmt == "saelens":  # the program itself
        done = _evaluate(path, "--site", "resid", "--layer", "12")
        code, err = done.returncode, done.stderr
    else:
        code, _, err = _evaluate_here(capsys, path, "--site", "resid", "--layer", "12")
    assert code == 0, err[-2000:]
    # Off a terminal, a line saying what runs instead of a bar's carriage returns.
    assert "evaluating on 300 held-out tokens" in err and "%|" not in err
    out_dir = path if path.is_dir() else path.parent
    results = json.loads((out_dir / "eval.json").read_text())
    assert results["tokens"] >= 300 and results["site"] == "resid" and results["layer"] == 12
    assert abs(results["delta_lm_loss"]) < 1e-4 and results["fvu"] < 1e-8
    image = matplotlib.image.imread(out_dir / "feature_density.png")
    assert image.shape[0] > 100 and image.shape[1] > 100


def test_evaluate_cli_needs_a_site_for_a_bare_sae_folder(tmp_path, capsys):
    path = save_sae(identity_sae(8), tmp_path / "sae")
    code, _, err = _evaluate_here(capsys, path)
    assert code == 2 and "--site and --layer" in err


@pytest.mark.parametrize(
    ("kw", "site", "message"),
    [
        ({"transcoder": True}, "mlp", "the transcoder cannot be evaluated at site 'mlp'"),
        ({}, "transcoder", "the SAE cannot be evaluated at site 'transcoder'"),
        ({}, "resid", "the SAE reads d_in=16 but the resid site of tiny-gemma-2"),
    ],
)
def test_an_sae_given_the_wrong_site_fails_in_one_line_and_writes_nothing(
    tmp_path, capsys, kw, site, message
):
    from tests.conftest import make_sae

    path = save_sae(make_sae("jumprelu", **kw), tmp_path / "sae")
    before = sorted(p.name for p in path.iterdir())
    code, _, err = _evaluate_here(capsys, path, "--site", site, "--layer", "2")  # no traceback:
    assert code == 2 and message in err  # any other exception would have failed the test
    assert sorted(p.name for p in path.iterdir()) == before


def test_density_histogram_is_a_picture_and_copes_with_all_dead(tmp_path):
    density = torch.tensor([0.0, 0.0, 1e-4, 0.02, 0.5])
    save_density_histogram(density, tmp_path / "a.png", title="t")
    save_density_histogram(torch.zeros(4), tmp_path / "b.png")  # no live latent: no log to take
    for name in ("a.png", "b.png"):
        assert matplotlib.image.imread(tmp_path / name).ndim == 3
    assert not list(tmp_path.glob("*.tmp*"))


@pytest.mark.slow
def test_evaluate_cli_writes_beside_a_run_without_clobbering_its_own_evaluation(llama_run):
    """The run's eval.json, density picture and metrics.json stay as train.py wrote them (they
    are what its summary, report.py and TensorBoard show); the new evaluation goes to a folder
    of its own in the run, which the command names."""
    run, _ = llama_run
    own = {name: (run / name).read_bytes() for name in RUN_FILES}
    done = _evaluate(run)
    assert done.returncode == 0, done.stderr[-2000:]
    assert {name: (run / name).read_bytes() for name in RUN_FILES} == own
    written = [line.removeprefix("written: ") for line in done.stdout.splitlines()]
    evaluation = next(Path(p) for p in written if p.endswith("eval.json"))
    assert evaluation.parent.parent == run and json.loads(evaluation.read_text())["tokens"] >= 300
    assert (evaluation.parent / "feature_density.png").is_file()


RUN_FILES = ("eval.json", "feature_density.png", "metrics.json")
