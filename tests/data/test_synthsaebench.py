"""data=synthsaebench: SAELens's benchmark model, built by SAELens's code, cached by saelab, and
its samples and ground truth handed unchanged to training and to SAELens's evaluation."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("sae_lens.synthetic")

from saelab.data.synthsaebench import (
    MANIFEST,
    SynthSAEBenchDataConfig,
    model_folder,
)
from tests.conftest import compose_config

# A tiny variant of SynthSAEBench-16k: every structural part (hierarchy, correlations,
# orthogonalisation, bias) present, built in about a second.
TINY = dict(
    hidden_dim=16,
    d_in=16,
    num_features=96,
    hierarchy_root_nodes=4,
    hierarchy_branching=2,
    hierarchy_max_depth=2,
    orthogonalization_steps=2,
    correlation_rank=4,
    firing_max_prob=0.3,
    firing_min_prob=0.02,
    batch_size=128,
    val_tokens=512,
)
TINY_OVERRIDES = ["data=synthsaebench"] + [f"data.{k}={v}" for k, v in TINY.items() if k != "d_in"]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("synthcache")


def tiny(cache_dir, **kw) -> SynthSAEBenchDataConfig:
    return SynthSAEBenchDataConfig(**{**TINY, "cache_dir": str(cache_dir), **kw})


def test_cached_model_is_the_model_sae_lens_builds(cache_dir):
    from sae_lens.synthetic import SyntheticModel

    cfg = tiny(cache_dir)
    cached = cfg.build().model
    assert (model_folder(cfg) / MANIFEST).is_file()
    fresh = SyntheticModel(cfg.model_config())
    torch.testing.assert_close(
        cached.feature_dict.feature_vectors, fresh.feature_dict.feature_vectors
    )
    torch.testing.assert_close(cached.feature_dict.bias, fresh.feature_dict.bias)
    torch.testing.assert_close(
        cached.activation_generator.firing_probabilities,
        fresh.activation_generator.firing_probabilities,
    )
    # A second data module reads the cache instead of building again.
    again = cfg.build().model
    torch.testing.assert_close(
        again.feature_dict.feature_vectors, cached.feature_dict.feature_vectors
    )


def test_batches_are_the_ground_truths_images_deterministic_and_distinct(cache_dir):
    dm = tiny(cache_dir).build()
    train = dm.split("train")
    x, acts = train.with_features(3)
    model = dm.model
    # The tokens training sees are exactly the true features through the true dictionary.
    torch.testing.assert_close(
        x, acts @ model.feature_dict.feature_vectors + model.feature_dict.bias
    )
    torch.testing.assert_close(train[3], x)
    torch.testing.assert_close(tiny(cache_dir).build().split("train")[3], x)
    assert not torch.equal(train[3], train[4])
    assert not torch.equal(train[3], dm.split("val")[3])
    assert not torch.equal(train[3], tiny(cache_dir, seed=1).build().split("train")[3])
    # Drawing a batch leaves training's own random stream untouched.
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    train[0]
    torch.testing.assert_close(torch.rand(3), expected)
    # The ground truth the feature-recovery callback scores against.
    assert dm.true_features.shape == (TINY["num_features"], TINY["hidden_dim"])
    torch.testing.assert_close(dm.true_features, model.feature_dict.feature_vectors)


def test_a_damaged_cache_is_refused_naming_the_file(cache_dir, tmp_path):
    cfg = tiny(tmp_path)
    cfg.build().prepare_data()
    weights = next(p for p in model_folder(cfg).iterdir() if p.suffix == ".safetensors")
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=weights.name):
        cfg.build().prepare_data()
    (model_folder(cfg) / MANIFEST).write_text("{not json")
    with pytest.raises(ValueError, match="delete .* to rebuild"):
        cfg.build().prepare_data()


@pytest.mark.parametrize("bad", [{"d_in": 8}, {"firing_min_prob": 0.5}, {"batch_size": 0}])
def test_invalid_keys_are_refused_naming_them(cache_dir, bad):
    with pytest.raises(ValueError, match=f"data\\.{next(iter(bad))}="):
        tiny(cache_dir, **bad)


def test_hydra_composes_the_published_configuration_and_its_variants(tmp_path):
    cfg = compose_config(["data=synthsaebench"], tmp_path)
    assert cfg.data.d_in == 768 and cfg.sae.d_in == 768 and cfg.data.num_features == 16_384
    from omegaconf import OmegaConf

    data = OmegaConf.to_object(cfg.data)
    published = data.model_config().to_dict()
    assert published["hierarchy"]["scale_children_by_parent"] is True
    assert published["seed"] == 42 and published["bias"] == 0.5
    assert data.export_metadata()["model_name"] == "synth-sae-bench-16k"
    variant = compose_config(["data=synthsaebench", "data.hidden_dim=256"], tmp_path)
    assert variant.sae.d_in == 256
    assert OmegaConf.to_object(variant.data).export_metadata()["model_name"] != (
        "synth-sae-bench-16k"
    )


@pytest.mark.slow
def test_a_trained_export_is_scored_by_sae_lens_on_the_same_ground_truth(cache_dir, tmp_path):
    """Train through the real runner, export, load with SAELens's own loader and score with
    SAELens's ``eval_sae_on_synthetic_data`` on the data module's model; its explained variance
    and L0 must match saelab's own SAE on the same samples."""
    from sae_lens import SAE
    from sae_lens.synthetic import eval_sae_on_synthetic_data

    from saelab.runner import train
    from saelab.sae import load_sae

    overrides = [
        *TINY_OVERRIDES,
        f"data.cache_dir={cache_dir}",
        "sae=topk",
        "sae.k=4",
        "sae.expansion_factor=4",
        "sae.normalization_tokens=1024",
        "trainer=debug",
        "logger=none",
    ]
    train(compose_config(overrides, tmp_path))
    assert json.loads((tmp_path / "sae" / "cfg.json").read_text())["d_in"] == 16

    dm = tiny(cache_dir).build()
    theirs = SAE.load_from_disk(str(tmp_path / "sae"))
    generator = Recording(dm.model.activation_generator)
    result = eval_sae_on_synthetic_data(
        theirs, dm.model.feature_dict, generator, num_samples=4096, batch_size=1024
    )
    # The samples SAELens scored, through saelab's own SAE and the data module's dictionary.
    acts = torch.cat(generator.seen)
    x = acts @ dm.true_features + dm.model.feature_dict.bias.detach()
    ours = load_sae(tmp_path / "sae")
    with torch.no_grad():
        f = ours.encode(x)
        x_hat = ours.decode(f)
    l0 = (f != 0).float().sum(1).mean().item()
    explained = 1 - (x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    assert result.sae_l0 == pytest.approx(l0, rel=1e-4)
    assert result.explained_variance == pytest.approx(float(explained), abs=1e-4)
    assert result.true_l0 == pytest.approx((acts != 0).float().sum(1).mean().item(), rel=1e-5)
    assert result.mcc == pytest.approx(hungarian_mcc(ours.W_dec, dm.true_features), abs=1e-5)
    assert 0.0 <= result.classification.f1_score <= 1.0


class Recording:
    """The data module's own activation generator, keeping what it handed out."""

    def __init__(self, generator):
        self.generator, self.seen = generator, []

    def sample(self, n: int):
        acts = self.generator.sample(n)
        self.seen.append(acts)
        return acts


def hungarian_mcc(W_dec, true_features) -> float:
    """Mean |cosine| of the best one-to-one matching of decoder rows to true features."""
    from scipy.optimize import linear_sum_assignment

    cos = (
        torch.nn.functional.normalize(W_dec.detach(), dim=1)
        @ torch.nn.functional.normalize(true_features, dim=1).T
    ).abs()
    rows, cols = linear_sum_assignment(-cos.numpy())
    return float(cos[rows, cols].mean())
