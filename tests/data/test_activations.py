"""data=activations through the real Hydra config and Lightning: compose, build or reuse the
cache, train, export; checkpoints carry the data position so a resumed run continues exactly."""

from __future__ import annotations

import json

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import OmegaConf

from saelab.data.activations import ActivationDataModule, ActivationsDataConfig
from saelab.runner import build, train
from tests.conftest import compose_config

from .conftest import model_config, row_ids, write_cache

# Tiny budgets: layer 1 of tiny-gemma-2, 64-token contexts, a few thousand tokens.
TINY_ACTS = [
    "layer=1",
    "data.context_length=64",
    "data.train_tokens=4096",
    "data.val_tokens=1024",
    "data.batch_size=512",
    "data.shard_tokens=2048",
    "data.progress=false",
    "data.device=cpu",
    "sae.expansion_factor=4",
    "sae.normalization_tokens=2048",
    "trainer=debug",
    "logger=none",
    "eval_tokens=128",
]


def test_default_config_is_activations_of_the_resid_site_at_layer_12(tmp_path):
    cfg = compose_config([], tmp_path)
    data = OmegaConf.to_object(cfg.data)
    assert isinstance(data, ActivationsDataConfig)
    assert (data.site, data.layer, data.d_in, cfg.sae.d_in) == ("resid", 12, 128, 128)
    assert data.model.name_or_path == "tiny-gemma-2" and data.batch_size == 4096
    mlp = compose_config(["sae=jumprelu", "site=mlp", "layer=20"], tmp_path)
    assert (mlp.data.site, mlp.data.layer, mlp.sae.d_in) == ("mlp", 20, 128)
    attn = compose_config(["site=attn"], tmp_path)
    assert (attn.data.site, attn.data.d_in, attn.sae.d_in) == ("attn", 128, 128)


def test_site_widths_and_depth_come_from_the_models_own_config(llama_dir, tmp_path):
    """No shape key anywhere: a 3-layer, 32-wide Llama folder with 4 heads x 16 at attn."""
    for site, width in (("resid", 32), ("mlp", 32), ("attn", 32)):
        cfg = compose_config(
            [f"model.name_or_path={llama_dir}", f"site={site}", "layer=2"], tmp_path
        )
        assert (cfg.data.d_in, cfg.sae.d_in) == (width, width)
        assert build(cfg)[0].cfg.layer == 2
    with pytest.raises(
        ValueError, match=rf"layer=3 is out of range: {llama_dir} has 3 layers \(0\.\.2\)"
    ):
        build(compose_config([f"model.name_or_path={llama_dir}", "layer=3"], tmp_path))


def test_attn_width_is_heads_times_head_dim_not_the_hidden_size(tmp_path):
    from transformers import LlamaConfig

    folder = tmp_path / "wide-heads"
    LlamaConfig(
        vocab_size=64,
        hidden_size=24,
        intermediate_size=32,
        num_hidden_layers=5,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=20,
    ).save_pretrained(folder)  # config.json only: widths need no weights
    cfg = compose_config([f"model.name_or_path={folder}", "site=attn", "layer=4"], tmp_path)
    assert cfg.data.d_in == 40
    assert compose_config([f"model.name_or_path={folder}", "site=mlp"], tmp_path).data.d_in == 24


def test_an_unreachable_hub_model_names_the_shape_keys_and_stated_shapes_work(tmp_path):
    from omegaconf.errors import InterpolationResolutionError

    cfg = compose_config(["model=gemma-2-2b"], tmp_path)  # not in any local cache here
    with pytest.raises(InterpolationResolutionError) as error:
        OmegaConf.to_container(cfg, resolve=True)
    message = str(error.value)
    assert "google/gemma-2-2b" in message
    assert "model.n_layers=<...> model.d_model=<...> model.d_attn=<...>" in message
    stated = ["model=gemma-2-2b", "model.n_layers=26", "model.d_model=2304", "model.d_attn=2048"]
    assert compose_config([*stated, "site=attn"], tmp_path).sae.d_in == 2048
    assert compose_config([*stated, "site=resid"], tmp_path).sae.d_in == 2304


def test_a_stated_shape_that_contradicts_the_model_is_refused(tmp_path):
    from omegaconf.errors import InterpolationResolutionError

    cfg = compose_config(["model.d_model=64"], tmp_path)
    with pytest.raises(InterpolationResolutionError, match="model.d_model=64 disagrees with"):
        OmegaConf.to_container(cfg, resolve=True)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["layer=26"],
            r"layer=26 is out of range: tiny-gemma-2 has 26 layers \(0\.\.25\)",
        ),
        (["data.site=embed"], "site='embed' is unknown: the sites are resid, mlp, attn"),
        (
            ["data.dtype=int8"],
            "data.dtype='int8' is invalid: use one of float32, float16, bfloat16",
        ),
        (
            ["data.val_tokens=100"],
            "data.val_tokens=100 is invalid: it must be >= data.batch_size=4096",
        ),
    ],
)
def test_bad_values_fail_before_any_work(tmp_path, overrides, message):
    cfg = compose_config([*overrides, f"data.cache_dir={tmp_path / 'cache'}"], tmp_path)
    with pytest.raises(ValueError, match=message):
        build(cfg)
    assert not (tmp_path / "cache").exists()


def test_unknown_site_option_lists_the_choices(tmp_path):
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="attn"):
        compose_config(["site=embed"], tmp_path)


@pytest.mark.slow
def test_train_on_activations_end_to_end_then_reuse_the_cache(tmp_path):
    cache = tmp_path / "cache"
    cfg = compose_config([*TINY_ACTS, f"data.cache_dir={cache}"], tmp_path / "run1")
    metrics = train(cfg)
    assert metrics["steps"] == 20 and np.isfinite(metrics["val/fvu"])
    exported = json.loads((tmp_path / "run1" / "sae" / "cfg.json").read_text())
    assert exported["d_in"] == 128
    # Where it reads, in the names SAELens and SAEBench use (threaded through by the runner).
    meta = exported["metadata"]
    assert (meta["model_name"], meta["hook_name"], meta["hook_layer"]) == (
        "tiny-gemma-2",
        "blocks.1.hook_resid_post",
        1,
    )
    evaluation = json.loads(
        (tmp_path / "run1" / "eval.json").read_text()
    )  # end-of-run splicing eval
    assert (
        evaluation["tokens"] >= 128 and evaluation["site"] == "resid" and evaluation["layer"] == 1
    )
    assert (
        np.isfinite(evaluation["delta_lm_loss"])
        and metrics["eval/delta_lm_loss"] == evaluation["delta_lm_loss"]
    )
    folders = sorted(p.name for p in cache.iterdir())
    assert (
        len(folders) == 2 and "--resid-L1--train--" in folders[0] and "--validation--" in folders[1]
    )
    val = json.loads((cache / folders[1] / "manifest.json").read_text())
    assert val["token_count"] == 1024 and val["spec"]["split"] == "validation"
    mtimes = {p: p.stat().st_mtime_ns for p in cache.rglob("shard_*.npy")}

    datamodule, _ = build(
        compose_config([*TINY_ACTS, f"data.cache_dir={cache}", "sae=topk"], tmp_path / "run2")
    )
    datamodule.prepare_data()  # a sweep's second run: same key, no rebuild
    assert {p: p.stat().st_mtime_ns for p in cache.rglob("shard_*.npy")} == mtimes
    metrics2 = train(
        compose_config([*TINY_ACTS, f"data.cache_dir={cache}", "site=mlp"], tmp_path / "run3")
    )
    assert (
        np.isfinite(metrics2["val/fvu"]) and len(list(cache.iterdir())) == 4
    )  # a new site: new caches


class _Recorder(pl.LightningModule):
    """Records which rows each training step saw; a single parameter so there is an optimiser."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[list[int]] = []

    def training_step(self, batch, batch_idx):
        self.seen.append(row_ids(batch).tolist())
        return (self.w * batch.mean()).sum() ** 2

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def _datamodule(tmp_path) -> ActivationDataModule:
    dm = ActivationsDataConfig(
        model=model_config(), batch_size=32, train_tokens=32, val_tokens=32, block_size=16, seed=7
    ).build()
    # A hand-written cache stands in for the LM pass, so rows are named by their values.
    dm.train_cache = write_cache(tmp_path / "train", [96, 96])  # 6 batches per epoch
    dm.val_cache = write_cache(tmp_path / "val", [32])
    return dm


def _trainer(tmp_path, steps, callbacks=()):
    return pl.Trainer(
        max_steps=steps,
        max_epochs=-1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=list(callbacks),
        default_root_dir=tmp_path,
    )


def test_a_resumed_lightning_run_neither_repeats_nor_skips_data(tmp_path):
    full = _Recorder()
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=4, save_top_k=-1)
    _trainer(tmp_path, 15, [ckpt]).fit(full, datamodule=_datamodule(tmp_path / "a"))
    assert len(full.seen) == 15
    rows = [r for step in full.seen[:12] for r in step]
    assert sorted(rows[:192]) == sorted(rows[192:384]) == list(range(192))  # whole epochs

    for step in (4, 8):  # mid-epoch (4) and across an epoch boundary (8 = 6 + 2)
        resumed = _Recorder()
        path = tmp_path / "ckpt" / f"epoch={step // 6}-step={step}.ckpt"
        _trainer(tmp_path, 15).fit(
            resumed, datamodule=_datamodule(tmp_path / f"r{step}"), ckpt_path=path
        )
        assert resumed.seen == full.seen[step:], step


def test_the_datamodule_state_restores_the_position_into_a_new_run(tmp_path):
    trained = _datamodule(tmp_path / "a")
    model = _Recorder()
    _trainer(tmp_path, 8).fit(model, datamodule=trained)
    state = trained.state_dict()
    assert (
        state["epoch"] == 1
        and state["offset"] == 2
        and state["cache_key"] == trained.train_cache.key
    )
    fresh = _datamodule(tmp_path / "b")
    fresh.load_state_dict(state)
    loader = fresh.train_dataloader()
    reference = _datamodule(tmp_path / "c").train_dataloader()
    expected = [b for _ in range(2) for b in reference][8:]
    assert all(torch.equal(a, b) for a, b in zip(loader, expected))


def test_a_corpus_without_validation_text_fails_before_the_train_cache_is_built(tmp_path):
    texts = tmp_path / "texts"
    texts.mkdir()
    (texts / "one.txt").write_text("a short document with nothing to hold out.\n" * 20)
    cache = tmp_path / "cache"
    cfg = compose_config(
        [*TINY_ACTS, f"data.corpus.source={texts}", f"data.cache_dir={cache}"], tmp_path / "run"
    )
    with pytest.raises(ValueError, match=r"validation split of corpus.source=.*texts.* is empty"):
        train(cfg)
    assert not list(cache.glob("*--train--*")), "no train cache may be started"


def test_a_validation_split_shorter_than_a_batch_fails_before_the_train_cache(tmp_path):
    texts = tmp_path / "texts"
    texts.mkdir()
    for i in range(40):  # short files: a few land in validation, far less than a batch
        (texts / f"doc{i}.txt").write_text(f"document {i} says hello. " * 10)
    cache = tmp_path / "cache"
    cfg = compose_config(
        [
            *TINY_ACTS,
            f"data.corpus.source={texts}",
            "data.corpus.val_fraction=0.2",
            "data.batch_size=1024",
            f"data.cache_dir={cache}",
        ],
        tmp_path / "run",
    )
    with pytest.raises(ValueError, match=r"holds only .* tokens, less than one batch"):
        train(cfg)
    assert not list(cache.glob("*--train--*"))
