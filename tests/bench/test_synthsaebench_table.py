"""bench/synthsaebench.py's table: seeds of one row at one lr are averaged; a row trained at
another lr (a changed default, an override) is its own line, never averaged in."""

from __future__ import annotations

from bench.synthsaebench import table


def _row(seed, lr, f1):
    keys = ("mcc", "uniqueness", "explained_variance", "l0", "dead", "train_s")
    row = {"row": "saelab:jumprelu", "target_l0": 25, "seed": seed, "lr": lr, "f1": f1}
    return row | {k: 1.0 for k in keys}


def test_rows_at_another_lr_are_not_averaged_in():
    rows = [_row(0, 1.5e-3, 0.4), _row(1, 1.5e-3, 0.6), _row(0, 8.7e-4, 0.9)]
    lines = [line for line in table(rows).splitlines() if "saelab:jumprelu" in line]
    assert len(lines) == 2
    by_lr = {line.split(" | ")[2]: line for line in lines}
    assert set(by_lr) == {"0.0015", "0.00087"}
    assert "| 0.5000 ± 0.1414 |" in by_lr["0.0015"] and by_lr["0.0015"].endswith("| 2 |")
    assert "| 0.9000 |" in by_lr["0.00087"] and by_lr["0.00087"].endswith("| 1 |")


def test_rows_with_other_overrides_are_their_own_line():
    other = _row(1, 1.5e-3, 0.2) | {"overrides": ["sae.lr=1.5e-3", "sae.adam_beta1=0.9"]}
    rows = [_row(0, 1.5e-3, 0.4), other]
    lines = [line for line in table(rows).splitlines() if "saelab:jumprelu" in line]
    assert len(lines) == 2
    named = [line for line in lines if "(sae.adam_beta1=0.9)" in line]
    assert len(named) == 1 and "sae.lr" not in named[0]  # the lr has its own column
    assert "| 0.2000 |" in named[0] and named[0].endswith("| 1 |")
