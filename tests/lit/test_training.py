"""Short real Lightning runs of every family: constraints hold after optimiser steps, the
normalisation scale is estimated and exported correctly, and TensorBoard gets the scalars."""

from __future__ import annotations

import json

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from saelab.runner import build, train
from saelab.sae import load_sae
from tests.conftest import FAMILIES, TINY_RUN, compose_config, exported_architecture, fit_module


def _fit(cfg, steps=6):
    datamodule, module = build(cfg)
    return _fit_module(datamodule, module, steps)


def _fit_module(datamodule, module, steps=6):
    fit_module(datamodule, module, steps)
    return datamodule, module


@pytest.mark.parametrize("arch", FAMILIES + ["gated-ri_l1"])
def test_decoder_constraint_after_steps(arch, tmp_path):
    family, _, variant = arch.partition("-")
    overrides = [f"sae={family}", *TINY_RUN, "sae.lr=1e-2"] + (
        [f"sae.variant={variant}"] if variant else []
    )
    datamodule, module = build(compose_config(overrides, tmp_path))
    init = module.sae.W_dec.detach().clone()
    _fit_module(datamodule, module)
    assert not torch.allclose(module.sae.W_dec, init), "training must move the decoder"
    norms = module.sae.W_dec.norm(dim=1)
    if module.objective.unit_norm_decoder:
        torch.testing.assert_close(norms, torch.ones_like(norms))
    else:
        assert (norms - 1).abs().max() > 1e-3, "ReLU / RI-L1 decoders are free to change norm"


def test_normalisation_scale_is_estimated_and_folded_at_export(tmp_path):
    cfg = compose_config(["sae=jumprelu", *TINY_RUN], tmp_path)
    datamodule, module = _fit(cfg, steps=3)
    sample = datamodule.sample_activations(cfg.sae.normalization_tokens)
    expected = sample.pow(2).sum(1).mean().sqrt()
    torch.testing.assert_close(module.activation_scale, expected)
    exported = module.export_sae()
    raw = datamodule.val_set[0]
    module.sae.eval()
    torch.testing.assert_close(
        exported.encode(raw), expected * module.sae.encode(raw / expected), rtol=1e-4, atol=1e-4
    )


def test_grad_projection_removes_parallel_component():
    from tests.conftest import make_sae

    sae = make_sae("jumprelu")
    sae.W_dec.grad = torch.randn_like(sae.W_dec)
    sae.remove_parallel_decoder_grad()
    torch.testing.assert_close(
        (sae.W_dec.grad * sae.W_dec).sum(1), torch.zeros(64), atol=1e-6, rtol=0
    )


def _scalars(run_dir):
    acc = EventAccumulator(
        str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "histograms": 0}
    )
    acc.Reload()
    return acc


@pytest.mark.parametrize("arch", FAMILIES)
def test_run_writes_tensorboard_checkpoint_and_export(arch, tmp_path):
    cfg = compose_config([f"sae={arch}", *TINY_RUN, "sae.lr=1e-3"], tmp_path)
    metrics = train(cfg)
    acc = _scalars(tmp_path)
    tags = set(acc.Tags()["scalars"])
    for tag in [
        "train/loss",
        "train/loss/mse",
        "train/l0",
        "train/dead_fraction",
        "train/sparsity_scale",
        "val/l0",
        "val/fvu",
        "val/dead_fraction",
        "val/dense_10pct_fraction",
        "val/mmcs",
        "val/recovered_fraction",
    ]:
        assert tag in tags, f"{tag} not logged; have {sorted(tags)}"
    assert any(t.startswith("lr-") for t in tags), "learning rate not logged"
    assert "val/log10_feature_density" in acc.Tags()["histograms"]
    if "jumprelu" in arch:
        assert "train/threshold/mean" in tags
    losses = [e.value for e in acc.Scalars("train/loss/mse")]
    assert losses[-1] < losses[0], "reconstruction must improve over the run"
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    assert json.loads((tmp_path / "metrics.json").read_text())["val/fvu"] == pytest.approx(
        metrics["val/fvu"]
    )
    sae = load_sae(tmp_path / "sae")
    # BatchTopK runs at inference with its global threshold, so it exports as JumpReLU (docs/maths.md §3).
    assert sae.cfg.architecture == exported_architecture(arch)


def test_dead_latents_are_tracked_over_a_token_window(tmp_path):
    cfg = compose_config(["sae=topk", *TINY_RUN, "sae.dead_tokens_window=512", "sae.k=4"], tmp_path)
    datamodule, module = build(cfg)
    with torch.no_grad():  # latents 0..2 can never win the top-k
        module.sae.W_enc[:, :3] = 0
        module.sae.b_enc[:3] = -100
    fit_module(datamodule, module, steps=4)
    dead = module.dead_mask()
    assert dead[:3].all()
    assert module.tokens_since_fired[:3].min() == 4 * 256
    assert dead.float().mean() < 0.5, "latents that fire must not be counted dead"


def test_the_preact_loss_reads_the_trainers_firing_count(tmp_path):
    """The pre-activation loss finds its silent latents in the count the trainer keeps for the
    dead window: latents that can never fire are pulled once they have been silent long enough."""
    overrides = [
        "sae=jumprelu",
        *TINY_RUN,
        "sae.preact_coefficient=1.0",
        "sae.experimental.preact_window=0.01",
    ]
    datamodule, module = build(compose_config(overrides, tmp_path))
    with torch.no_grad():  # latents 0..2 never fire
        module.sae.W_enc[:, :3] = 0
        module.sae.b_enc[:3] = -100
    trainer = fit_module(datamodule, module, steps=3)
    assert module.tokens_since_fired[:3].min() == 3 * 256
    assert trainer.callback_metrics["train/loss/preact"] > 1.0


def test_train_values_are_logged_on_the_steps_lightning_writes_and_are_those_steps(tmp_path):
    """train/* is logged only on the steps Lightning writes (every log_every_n_steps): each
    value written is its own step's, not one left over from an earlier step."""
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import TensorBoardLogger

    class Losses(pl.Callback):
        def __init__(self):
            self.losses = []

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            self.losses.append(float(outputs["loss"]))

    datamodule, module = build(compose_config(["sae=topk", *TINY_RUN], tmp_path / "run"))
    record = Losses()
    trainer = pl.Trainer(
        max_steps=10,
        log_every_n_steps=4,
        logger=TensorBoardLogger(tmp_path, name="tb", version=0),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[record],
    )
    trainer.fit(module, datamodule=datamodule)
    acc = EventAccumulator(str(tmp_path / "tb" / "version_0"), size_guidance={"scalars": 0})
    acc.Reload()
    written = [(e.step, e.value) for e in acc.Scalars("train/loss")]
    assert [step for step, _ in written] == [3, 7]  # the 4th and 8th steps
    assert [value for _, value in written] == pytest.approx([record.losses[3], record.losses[7]])
    assert len(set(record.losses)) == 10, "every step's loss differs, so a stale value shows"
