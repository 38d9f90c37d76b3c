"""Matryoshka BatchTopK: its loss against a direct implementation (every prefix of the
dictionary reconstructs x), its configuration, and the whole life of a run as a user has it:
train.py, the JumpReLU export, evaluate.py, report.py and browse.py."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from saelab.sae import JumpReLUSAE, Step, load_sae
from tests.conftest import make_training, run_script

ROOT = Path(__file__).resolve().parents[2]


def _direct_loss(sae, x: torch.Tensor, k: int, ends: list[int]) -> dict[str, torch.Tensor]:
    """BatchTopK's features (the k * B largest ReLU pre-activations of the batch, pre-encoder
    bias b_dec), then sum over prefixes m of mean_b ||x - f[:, :m] W_dec[:m] - b_dec||^2."""
    z = F.relu((x - sae.b_dec) @ sae.W_enc + sae.b_enc)
    keep = z.flatten().topk(k * x.shape[0]).indices
    f = torch.zeros_like(z.flatten()).index_put((keep,), z.flatten()[keep]).view_as(z)
    per_prefix = [(x - (f[:, :m] @ sae.W_dec[:m] + sae.b_dec)).pow(2).sum(-1).mean() for m in ends]
    return {"mse": per_prefix[-1], "prefix_mse": sum(per_prefix[:-1])}


@pytest.mark.parametrize("sparse", [False, True])
def test_loss_sums_the_reconstruction_of_every_prefix(sparse):
    sae, objective = make_training("matryoshka", k=6, prefix_fractions=[0.25, 0.5, 1.0])
    sae = sae.double()
    with torch.no_grad():  # away from the symmetric init
        for p in sae.parameters():
            p.add_(0.2 * torch.randn_like(p))
    x = torch.randn(40, 16, dtype=torch.float64) * 2
    out = sae(x, objective=objective, step=Step(sparse=sparse))
    direct = _direct_loss(sae, x, k=6, ends=[16, 32, 64])
    assert out.losses.keys() == direct.keys()
    for key in direct:
        torch.testing.assert_close(out.losses[key], direct[key], rtol=1e-9, atol=1e-10)
    grads = torch.autograd.grad(out.loss, list(sae.parameters()))
    ref = torch.autograd.grad(sum(direct.values()), list(sae.parameters()))
    for (name, _), g, r in zip(sae.named_parameters(), grads, ref):
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-10, msg=name)
    f = out.feature_acts
    assert all((f[:, a:b] != 0).any() for a, b in ((0, 16), (16, 32), (32, 64))), (
        "every group of latents must fire for the prefixes to differ"
    )


def test_a_single_prefix_is_batchtopk():
    torch.manual_seed(0)
    sae, objective = make_training("matryoshka", k=5, prefix_fractions=[1.0])
    torch.manual_seed(0)
    batchtopk, bt_objective = make_training("batchtopk", k=5)
    batchtopk.load_state_dict(sae.state_dict())
    x = torch.randn(32, 16)
    ours = sae(x, objective=objective)
    theirs = batchtopk(x, objective=bt_objective)
    assert ours.losses.keys() == theirs.losses.keys() == {"mse"}
    torch.testing.assert_close(ours.losses["mse"], theirs.losses["mse"])


@pytest.mark.parametrize(
    "fractions", [[0.5, 0.25, 1.0], [0.25, 0.5], [0.0, 1.0], [0.25, 0.251, 1.0]]
)
def test_bad_prefix_fractions_are_named(fractions):
    with pytest.raises(ValueError, match="prefix_fractions"):
        make_training("matryoshka", prefix_fractions=fractions)


def _run(script: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, script, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done


def _main(script: str, *args: str) -> None:
    # In this process (train.py, run above as a program, checks the entry point itself).
    assert run_script(script, *args) == 0


@pytest.mark.slow
def test_trains_exports_evaluates_reports_and_browses_like_every_family(tmp_path):
    run = tmp_path / "sweep" / "0"
    common = [
        "trainer=debug",
        "model.context_length=64",
        "data.train_tokens=8192",
        "data.val_tokens=4096",
        "data.batch_size=1024",
        "data.shard_tokens=4096",
        "sae.k=8",
        "eval_tokens=512",
        f"data.cache_dir={tmp_path / 'cache'}",
    ]
    _run("train.py", "-m", "sae=matryoshka", *common, f"hydra.sweep.dir={tmp_path / 'sweep'}")
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["family"] == "matryoshka" and metrics["steps"] == 20
    sae = load_sae(run / "sae")
    assert isinstance(sae, JumpReLUSAE), "exported as the JumpReLU SAE it is at inference"
    assert json.loads((run / "eval.json").read_text())["tokens"] >= 512  # end-of-run evaluation

    _main("evaluate.py", str(run), "--tokens", "256", "--context-length", "64")
    assert json.loads((run / "eval.json").read_text())["tokens"] >= 256

    _main("report.py", str(tmp_path / "sweep"), "--out", str(tmp_path / "report"))
    with open(tmp_path / "report" / "runs.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert row["family"] == "matryoshka" and row["knob"] == "k" and float(row["knob_value"]) == 8

    _main("browse.py", str(run), "--tokens", "512", "--out", str(tmp_path / "browser"))
    assert (tmp_path / "browser" / "index.html").is_file()
