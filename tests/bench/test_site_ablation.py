"""bench/site_ablation.py prints, per layer, the ablation cost a run's own evaluation divides CE
loss recovered by: the same number, on the same held-out contexts."""

from __future__ import annotations

import re

import pytest

from bench.site_ablation import main
from saelab.evaluation import evaluate_on_validation
from saelab.runner import _to_object
from tests.conftest import compose_config
from tests.test_evaluation import identity_sae

TOKENS = 200


def test_each_layers_cost_is_the_one_the_evaluation_divides_by(llama_dir, tmp_path, capsys):
    overrides = [f"model.name_or_path={llama_dir}", "site=mlp", "data.context_length=64"]
    main([*overrides, "--tokens", str(TOKENS)])
    rows = re.findall(r"^\| (\d+) \| ([\d.]+) \| (-?[\d.]+) \|$", capsys.readouterr().out, re.M)
    assert [int(layer) for layer, _, _ in rows] == [0, 1, 2]  # the folder's 3 layers
    data = _to_object(compose_config([*overrides, "layer=1"], tmp_path), "data")
    width = data.d_in
    evaluation = evaluate_on_validation(identity_sae(width), data, TOKENS, progress=False)
    _, clean, cost = rows[1]
    assert float(clean) == pytest.approx(evaluation["ce_clean"], abs=6e-4)
    expected = evaluation["ce_zero_ablation"] - evaluation["ce_clean"]
    assert float(cost) == pytest.approx(expected, abs=6e-5)
