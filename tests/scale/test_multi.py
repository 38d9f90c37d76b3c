"""Several SAEs in one pass over the data: each member ends with exactly the weights (bitwise) it
gets when trained alone with the same seed and data, with its own learning rate and schedules;
members are configured as keys on top of ``sae`` or as whole family options; bad keys are named."""

from __future__ import annotations

import json

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from saelab.lit import MultiSAELit
from saelab.runner import build, train
from saelab.sae import load_sae
from tests.conftest import FAMILIES, TINY_RUN, compose_config, exported_architecture

from .helpers import checkpoint

BASE = [*TINY_RUN, "logger=none", "trainer.max_steps=12", "export=true"]
SHARED = {"expansion_factor": 4, "normalization_tokens": 2048}  # what TINY_RUN sets on `sae`


def _member_state(run, name: str) -> dict[str, torch.Tensor]:
    state = checkpoint(run)["state_dict"]
    return {
        k.removeprefix(f"members.{name}."): v
        for k, v in state.items()
        if k.startswith(f"members.{name}.")
    }


def _assert_bitwise_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key, value in a.items():
        assert torch.equal(value, b[key]), key


def test_every_family_trained_together_equals_each_trained_alone(tmp_path):
    members = []
    for family in FAMILIES:
        members.append(f"+sae@multi.saes.{family}={family}")
        members += [f"multi.saes.{family}.{k}={v}" for k, v in SHARED.items()]
    members.append("multi.saes.relu.lr=1e-3")  # a per-SAE learning rate
    metrics = train(compose_config([*BASE, *members], tmp_path / "multi"))
    for family in FAMILIES:
        lr = ["sae.lr=1e-3"] if family == "relu" else []
        alone = train(compose_config([*BASE, f"sae={family}", *lr], tmp_path / family))
        _assert_bitwise_equal(
            _member_state(tmp_path / "multi", family), checkpoint(tmp_path / family)["state_dict"]
        )
        assert metrics[f"{family}/val/fvu"] == alone["val/fvu"]
        exported = load_sae(tmp_path / "multi" / "sae" / family)  # each member in its own folder
        assert exported.cfg.architecture == exported_architecture(family)
    groups = checkpoint(tmp_path / "multi")["optimizer_states"][0]["param_groups"]
    # One group per member, plus one for the thresholds of each JumpReLU-type member (their own
    # lr, docs/maths.md §8.9).
    mains = [g["name"] for g in groups if "/" not in g["name"]]
    extra = [g["name"] for g in groups if "/" in g["name"]]
    assert mains == list(FAMILIES)
    assert extra == [f"{f}/1" for f in FAMILIES if "jumprelu" in f]
    assert next(g for g in groups if g["name"] == "relu")["initial_lr"] == 1e-3


def test_a_sparsity_sweep_as_keys_on_top_of_sae(tmp_path):
    # A member's own key is overridden as usual; a key it does not set yet takes a "+".
    cfg = compose_config(
        [
            *BASE,
            "multi=l0_sweep",
            "+multi.saes.l0_16.lr=3e-3",
            "multi.saes.l0_64.lr=2e-4",
            "logger=tensorboard",
        ],
        tmp_path,
    )
    _, module = build(cfg)
    assert isinstance(module, MultiSAELit) and list(module.members) == ["l0_16", "l0_32", "l0_64"]
    a, b, c = module.members.values()
    assert (a.cfg.target_l0, b.cfg.target_l0, c.cfg.target_l0) == (16, 32, 64)
    default_lr = build(compose_config(BASE, tmp_path / "single"))[1].cfg.lr  # the family's own rule
    assert (a.cfg.lr, b.cfg.lr, c.cfg.lr) == (3e-3, default_lr, 2e-4) and default_lr not in (
        3e-3,
        2e-4,
    )
    assert (
        a.cfg.expansion_factor == 4 and a.cfg.d_in == 16
    )  # everything else from `sae` and the data
    metrics = train(cfg)
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["l0_64/val/l0"] == metrics["l0_64/val/l0"] and written["steps"] == 12
    assert sorted(p.name for p in (tmp_path / "sae").iterdir()) == ["l0_16", "l0_32", "l0_64"]
    assert load_sae(tmp_path / "sae" / "l0_64").d_sae == 64  # a loadable SAELens folder per member
    events = EventAccumulator(
        str(tmp_path / "tensorboard"), size_guidance={"scalars": 0, "histograms": 0}
    )
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for name in ("l0_16", "l0_32", "l0_64"):  # every member under its own name
        assert {
            f"{name}/train/loss",
            f"{name}/val/fvu",
            f"{name}/val/mmcs",
            f"lr-Adam/{name}",
        } <= tags, tags
        assert f"{name}/val/log10_feature_density" in events.Tags()["histograms"]


def test_the_families_option_composes_every_family(tmp_path):
    cfg = compose_config([*BASE, "multi=families", "multi.saes.topk.k=8"], tmp_path)
    _, module = build(cfg)
    assert {n: type(m).__name__ for n, m in module.members.items()} == {
        "jumprelu": "JumpReLULit",
        "gated": "GatedLit",
        "topk": "TopKLit",
        "relu": "ReLULit",
    }
    assert module.members["topk"].cfg.k == 8 and module.members["relu"].cfg.lr == 5e-5


@pytest.mark.parametrize(
    "member, message",
    [
        ("{l0_coefficent:1e-3}", r"multi\.saes\.a: .*l0_coefficent"),
        ("{lr:-1.0}", r"multi\.saes\.a\.lr=-1\.0 is invalid: it must be > 0"),
    ],
)
def test_bad_member_keys_are_named(tmp_path, member, message):
    with pytest.raises(ValueError, match=message):
        build(compose_config([*BASE, f"+multi.saes.a={member}"], tmp_path))
