"""bench/prefix_decode.py times the same loss two ways: its masked decode gives saelab's
segment decode's prefix terms and gradients, and the table has a row for every step timed."""

from __future__ import annotations

import re

import torch

from bench.prefix_decode import main, masked_encode_sparse
from saelab.sae.objective import Step
from tests.conftest import make_training


def test_the_masked_decode_is_the_same_loss_as_saelabs():
    sae, objective = make_training("matryoshka_jumprelu", target_l0=8)
    sae = sae.double()
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(32, 16, dtype=torch.float64)
    step = Step(index=95, total=100, sparse=True)
    ours = objective.loss(sae, x, step)
    objective.encode_sparse = masked_encode_sparse.__get__(objective)
    masked = objective.loss(sae, x, step)
    assert ours.losses.keys() == masked.losses.keys() and "prefix_mse" in ours.losses
    for key, value in ours.losses.items():
        torch.testing.assert_close(value, masked.losses[key], rtol=1e-12, atol=1e-12)
    a = torch.autograd.grad(ours.loss, list(sae.parameters()), allow_unused=True)
    b = torch.autograd.grad(masked.loss, list(sae.parameters()), allow_unused=True)
    for g, h in zip(a, b):
        assert (g is None) == (h is None)
        if g is not None:
            torch.testing.assert_close(g, h, rtol=1e-10, atol=1e-12)


def test_the_table_has_every_step(capsys):
    main(["--d-in", "16", "--d-sae", "64", "--batch", "32", "--l0", "4", "--rounds", "1"])
    rows = re.findall(
        r"^\| ([a-z_ ()A-Z,]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|$",
        capsys.readouterr().out,
        re.M,
    )
    names = [r[0] for r in rows]
    assert names[0] == "jumprelu" and len(names) == 5 and float(rows[0][2]) == 1.0
    assert {n.split(",")[1].strip() for n in names[1:]} == {"segments", "masked"}
