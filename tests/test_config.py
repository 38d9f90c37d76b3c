"""Every option in conf/ composes and instantiates; bad configs fail early, naming the key."""

from __future__ import annotations

import numpy as np
import pytest
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError

from saelab.lit import LIT_CLASSES
from saelab.runner import build
from tests.conftest import CONF_DIR, TINY_RUN, compose_config


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


# Recipes: further options of a family (same schema, other defaults).
RECIPES = {"jumprelu_paper": "jumprelu"}


def test_every_family_has_a_config():
    assert set(LIT_CLASSES) <= set(_options("sae"))
    assert set(_options("sae")) - set(LIT_CLASSES) == set(RECIPES)


@pytest.mark.parametrize("sae", _options("sae"))
@pytest.mark.parametrize("data", _options("data"))
def test_sae_and_data_options_compose_and_build(sae, data, tmp_path):
    # TINY_RUN shrinks the synthetic data; other sources keep their own (lazy) defaults.
    overrides = TINY_RUN if data == "synthetic" else ["trainer=debug", "sae.expansion_factor=4"]
    if data == "files":  # the one source that needs the user's data: 8,192 rows of width 24
        np.save(tmp_path / "acts.npy", np.ones((8192, 24), np.float32))
        overrides = [*overrides, f"data.path={tmp_path / 'acts.npy'}"]
    cfg = compose_config([*overrides, f"sae={sae}", f"data={data}"], tmp_path)
    assert cfg.data.get("_target_") is None and OmegaConf.get_type(
        cfg.data
    ).__name__.lower().startswith(data[:5])
    datamodule, module = build(cfg)
    assert module.sae.cfg.architecture == RECIPES.get(sae, sae)
    assert module.sae.d_in == datamodule.d_in == cfg.data.d_in


@pytest.mark.parametrize("trainer", _options("trainer"))
@pytest.mark.parametrize("logger", _options("logger"))
def test_trainer_and_logger_options_instantiate(trainer, logger, tmp_path):
    cfg = compose_config([f"trainer={trainer}", f"logger={logger}"], tmp_path)
    lg = instantiate(cfg.logger) if cfg.get("logger") else False
    t = instantiate(cfg.trainer, logger=lg)
    assert t.max_steps == cfg.trainer.max_steps


def test_unknown_family_lists_the_choices(tmp_path):
    with pytest.raises(ConfigCompositionException, match="jumprelu"):
        compose_config(["sae=sparse"], tmp_path)


def test_typo_in_key_is_named(tmp_path):
    with pytest.raises(ConfigCompositionException) as info:
        compose_config(["sae.l0_coeficient=1.0"], tmp_path)
    assert "l0_coeficient" in str(info.value) + str(info.value.__cause__)


def test_wrong_type_is_named(tmp_path):
    with pytest.raises((ConfigCompositionException, ValidationError)) as info:
        compose_config(["sae=topk", "sae.k=many"], tmp_path)
    assert "k" in str(info.value) + str(info.value.__cause__)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["sae=topk", "sae.k=10000"],
            "sae.k=10000 is invalid: it must be an integer in \\[1, d_sae=512\\]",
        ),
        (["sae=jumprelu", "sae.l0_coefficient=-1"], "sae.l0_coefficient=-1.0 is invalid"),
        (["sae=relu", "sae.l1_coefficient=-1"], "l1_coefficient"),
        (
            ["sae=jumprelu", "sae.experimental.kernel=box"],
            "sae.experimental.kernel=.box. is invalid: it must be one of 'rectangle'",
        ),
        (["sae=gated", "sae.lr=0"], "lr=0.0 is invalid"),
        (["data.mean_l0=0"], "data.mean_l0"),
    ],
)
def test_bad_values_fail_before_any_work(overrides, message, tmp_path):
    # These cases are about the synthetic data and its d_in=64 (d_sae=512); the default is LM activations.
    cfg = compose_config(["data=synthetic", *overrides], tmp_path)
    with pytest.raises(ValueError, match=message):
        build(cfg)


def test_unknown_top_level_key_is_refused(tmp_path):
    with pytest.raises(ConfigCompositionException):
        compose_config(["learning_rate=1"], tmp_path)


def test_topk_default_lr_follows_width(tmp_path):
    cfg = compose_config(["sae=topk", "data.d_in=64", "sae.expansion_factor=256"], tmp_path)
    _, module = build(cfg)
    assert module.cfg.lr == pytest.approx(2e-4)  # d_sae = 2^14


@pytest.mark.parametrize("model", _options("model"))
def test_model_options_compose_and_validate(model, tmp_path):
    from omegaconf import OmegaConf

    from saelab.lm.config import ModelConfig

    cfg = compose_config([f"model={model}"], tmp_path)
    model_cfg = OmegaConf.to_object(cfg.model)
    assert isinstance(model_cfg, ModelConfig) and model_cfg.trust_remote_code is False
    # A preset names a model and its defaults, never its shape (read from the model itself).
    assert (model_cfg.n_layers, model_cfg.d_model, model_cfg.d_attn) == (None, None, None)


@pytest.mark.parametrize("family", sorted(LIT_CLASSES))
def test_family_yaml_states_the_schema_defaults(family):
    """conf/sae/<family>.yaml and the family's dataclass agree on every key the yaml sets, so a
    run composed by Hydra and a config built in Python train the same SAE."""
    import dataclasses

    defaults = {
        f.name: f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
        for f in dataclasses.fields(LIT_CLASSES[family].config_class)
    }
    yaml = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "sae" / f"{family}.yaml"))
    stated = {k: v for k, v in yaml.items() if k != "defaults"}
    assert stated, "the yaml sets no key"
    for key, value in stated.items():  # approx: a list of floats too
        assert defaults[key] == pytest.approx(value), key


def test_jumprelu_paper_is_the_papers_recipe(tmp_path):
    # Written out from docs/maths.md §1 (Gemma Scope), not read from the code.
    paper = {
        "l0_coefficient": 5e-4,
        "bandwidth": 1e-3,
        "threshold_init": 1e-3,
        "target_l0": None,
        "threshold_warmup_fraction": 0.0,
        "aux_coefficient": 0.0,
        "lr": 7e-5,
        "adam_beta1": 0.0,
        "adam_beta2": 0.999,
        "adam_eps": 1e-8,
        "lr_warmup_steps": 1000,
        "lr_decay_fraction": 0.0,
        "sparsity_warmup_steps": 10_000,
    }
    paper_experimental = {"kernel": "rectangle", "threshold_init_l0": None}
    cfg = build(compose_config(["sae=jumprelu_paper", *TINY_RUN], tmp_path))[1].cfg
    assert {k: getattr(cfg, k) for k in paper} == paper
    ex = cfg.experimental
    assert {k: getattr(ex, k) for k in paper_experimental} == paper_experimental


@pytest.mark.parametrize("family", sorted(LIT_CLASSES))
def test_the_python_api_trains_the_same_sae_as_the_cli(family, tmp_path):
    """One set of defaults per family: a module built in Python from the required keys only
    runs with every field the CLI's ``sae=<family>`` gives it (the objective's, the SAE's) and
    computes the same training loss from the same seed."""
    import dataclasses

    import torch

    from saelab.sae import Step

    cfg = compose_config([f"sae={family}", "data=synthetic"], tmp_path)
    torch.manual_seed(0)
    _, cli = build(cfg)
    torch.manual_seed(0)
    api = LIT_CLASSES[family](d_in=cfg.data.d_in)
    assert dataclasses.asdict(api.cfg) == dataclasses.asdict(cli.cfg)
    assert dataclasses.asdict(api.objective.cfg) == dataclasses.asdict(cli.objective.cfg)
    assert dataclasses.asdict(api.sae.cfg) == dataclasses.asdict(cli.sae.cfg)
    assert api.objective.cfg is api.cfg, "the objective trains with the module's own config"
    x = torch.randn(64, cfg.data.d_in)
    step = Step(index=0, total=10, dead_mask=torch.zeros(api.sae.d_sae, dtype=torch.bool))
    losses = [m.sae(x, objective=m.objective, step=step).losses for m in (api, cli)]
    assert losses[0].keys() == losses[1].keys()
    for key in losses[0]:
        torch.testing.assert_close(losses[0][key], losses[1][key], msg=key)


@pytest.mark.parametrize(
    "override, key",
    [
        ("sae.expansion_factor=0", "sae.expansion_factor=0"),
        ("sae.d_sae=0", "sae.d_sae=0"),
        ("sae.d_sae=-4", "sae.d_sae=-4"),
        ("sae.lr=inf", "sae.lr=inf"),
        ("sae.lr=nan", "sae.lr=nan"),
    ],
)
@pytest.mark.parametrize("family", ["jumprelu", "topk"])
def test_bad_shape_or_lr_names_the_key_before_any_arithmetic(family, override, key, tmp_path):
    cfg = compose_config([f"sae={family}", "data=synthetic", override], tmp_path)
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        build(cfg)


def test_jumprelus_recipe_is_a_handful_of_keys_and_the_rest_one_experimental_group():
    """The recipe's own knobs stay few (each with one meaning); research options live under
    ``sae.experimental`` and are named there, not beside the recipe."""
    import dataclasses

    from saelab.sae.jumprelu import JumpReLUConfig, JumpReLUExperimental, JumpReLUTrainConfig
    from saelab.sae.train_config import TrainConfig

    shared = {f.name for c in (TrainConfig, JumpReLUConfig) for f in dataclasses.fields(c)}
    own = [f.name for f in dataclasses.fields(JumpReLUTrainConfig) if f.name not in shared]
    assert "experimental" in own and len(own) <= 10, own
    research = {f.name for f in dataclasses.fields(JumpReLUExperimental)}
    assert not research & set(own), "a research option beside the recipe's keys"
    yaml = OmegaConf.load(CONF_DIR / "sae" / "jumprelu.yaml")
    assert "experimental" not in yaml, "the recipe's yaml sets no research option"


@pytest.mark.parametrize("family", ["jumprelu", "matryoshka_jumprelu"])
def test_jumprelu_default_lr_follows_d_in_not_width(family, tmp_path):
    """3e-3 on 256 dimensions, 1/sqrt(d_in), the same at every width (docs/maths.md §3.6)."""
    lrs = {}
    for d_in, expansion in [(64, 16), (256, 4), (256, 16), (128, 8)]:
        overrides = [f"sae={family}", f"data.d_in={d_in}", f"sae.expansion_factor={expansion}"]
        _, module = build(compose_config(overrides, tmp_path / f"{d_in}x{expansion}"))
        lrs[d_in, d_in * expansion] = module.cfg.lr
    assert lrs[256, 1024] == pytest.approx(3e-3)
    assert lrs[64, 1024] == pytest.approx(6e-3)  # a quarter of d_in: twice the lr
    assert lrs[256, 4096] == pytest.approx(3e-3)  # four times the latents: the same lr
    assert lrs[128, 1024] == pytest.approx(3e-3 * 2**0.5)
