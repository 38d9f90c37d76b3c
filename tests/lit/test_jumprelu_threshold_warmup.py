"""JumpReLU's threshold warm-up (``sae.threshold_warmup_fraction``): during the warm-up every
step starts from per-latent quantile thresholds that give the batch exactly the L0 asked for;
after it the thresholds are learnt by the straight-through estimator and only move by Adam
steps. Real Lightning runs on synthetic activations."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch

from saelab.runner import build
from saelab.sae import Step
from tests.conftest import TINY_RUN, compose_config, make_training


def _warming_up(path: str, warmup: str):
    """A JumpReLU asked for L0 = 6, at the first step of a run in its threshold warm-up, on the
    dense or the sparse path."""
    sae, objective = make_training(
        "jumprelu", d_in=16, d_sae=64, target_l0=6, threshold_warmup=warmup
    )
    return sae, objective, Step(index=0, total=100, sparse=path == "sparse")


@pytest.mark.parametrize("path", ["dense", "sparse"])
def test_quantile_reset_gives_the_batch_the_requested_l0(path):
    sae, objective, step = _warming_up(path, "per_latent")
    x = torch.randn(4000, 16) * 2 + 0.5
    out = sae(x, objective=objective, step=step)
    # 4000 * 6 / 64 = 375 tokens above each latent's quantile: L0 = 64 * 375 / 4000 = 6.
    assert out.metrics["l0"].item() == pytest.approx(6.0, abs=1e-9)
    fired = (out.feature_acts != 0).sum(0)
    assert torch.all(fired == 375), "every latent fires on the same number of tokens"
    before = sae.log_threshold.detach().clone()
    out.loss.backward()
    # The learnt thresholds are untouched by the forward but still get a gradient (DDP needs it).
    assert torch.equal(sae.log_threshold.detach(), before)
    assert sae.log_threshold.grad is not None and sae.log_threshold.grad.abs().sum() > 0


@pytest.mark.parametrize("path", ["dense", "sparse"])
def test_pooled_reset_gives_the_batch_the_requested_l0_with_one_threshold(path):
    sae, objective, step = _warming_up(path, "pooled")
    x = torch.randn(4000, 16) * 2 + 0.5
    x[:, 0] *= 4  # latents now differ in scale: a pooled threshold lets their rates differ
    out = sae(x, objective=objective, step=step)
    theta = objective.warmup_threshold
    assert torch.all(theta == theta[0]), "one threshold for every latent"
    # The 4000 * 6 largest pre-activations of the batch fire: L0 = 6.
    assert out.metrics["l0"].item() == pytest.approx(6.0, abs=1e-9)
    z = sae.pre_acts(x).detach()
    assert torch.equal(out.feature_acts != 0, z > theta)
    flat = z.flatten().sort(descending=True).values
    assert flat[4000 * 6] == theta[0] < flat[4000 * 6 - 1], "exceeded by exactly the 24,000 largest"
    rates = (out.feature_acts != 0).float().mean(0)
    assert rates.max() > 3 * rates.median(), "firing rates follow the data, not a quota"


class _RecordSteps(pl.Callback):
    def __init__(self):
        self.l0, self.log_threshold, self.W_dec, self.W_enc = [], [], [], []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.l0.append(float(trainer.callback_metrics["train/l0"]))
        self.log_threshold.append(module.sae.log_threshold.detach().clone())
        self.W_dec.append(module.sae.W_dec.detach().clone())
        self.W_enc.append(module.sae.W_enc.detach().clone())


def _fit(tmp_path, warmup: float, steps: int = 8, extra: tuple[str, ...] = ()):
    lr = 1e-2
    cfg = compose_config(
        [
            "sae=jumprelu",
            *TINY_RUN,
            "sae.target_l0=6",
            # Pooled: every batch's L0 is exactly the target (per-token keeps fewer on rows with
            # fewer positive pre-activations; tests/sae/test_jumprelu_recipe.py).
            "sae.experimental.threshold_warmup=pooled",
            f"sae.lr={lr}",
            f"sae.threshold_warmup_fraction={warmup}",
            "sae.lr_warmup_steps=0",
            # A controller that responds within the 4-step per-latent half: else an 8-step run is
            # all warm-up (test_jumprelu_short_runs.py).
            "sae.experimental.target_l0_lr=1",
            *extra,
        ],
        tmp_path,
    )
    pl.seed_everything(0, verbose=False)  # two runs with one config are the same run
    datamodule, module = build(cfg)
    record = _RecordSteps()
    trainer = pl.Trainer(
        max_steps=steps,
        logger=False,
        log_every_n_steps=1,  # train/* is logged on the steps Lightning writes: here every one
        enable_checkpointing=False,
        callbacks=[record],
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(module, datamodule=datamodule)
    return record, lr


def test_warmup_holds_l0_at_the_target_then_hands_thresholds_to_the_ste(tmp_path):
    record, lr = _fit(tmp_path / "warm", warmup=0.5)
    # Steps 0-3 (half of 8): each batch's L0 is the target, up to rounding of the quantile.
    assert record.l0[:4] == pytest.approx([6.0] * 4, abs=0.05)
    # Steps 4-7: no more resets; Adam (beta1 = 0) moves log(theta) by at most ~lr per step.
    for before, after in zip(record.log_threshold[4:], record.log_threshold[5:]):
        assert (after - before).abs().max() < 3 * lr
    # Without the warm-up the same run starts from theta_init = 1e-3, far from L0 = 6.
    cold, _ = _fit(tmp_path / "cold", warmup=0.0)
    assert cold.l0[0] > 3 * 6


@pytest.mark.parametrize("scale", [0.0, 0.1, 1.0])
def test_the_decoder_moves_at_its_own_rate_after_the_warm_up(tmp_path, scale):
    extra = (f"sae.decoder_lr_after_warmup={scale}",)
    record, _ = _fit(tmp_path / "scaled", warmup=0.5, extra=extra)
    full, _ = _fit(tmp_path / "full", warmup=0.5, extra=("sae.decoder_lr_after_warmup=1",))
    # The warm-up (steps 0-3) trains the decoder at the full lr either way: the same run.
    assert torch.equal(record.W_dec[3], full.W_dec[3])
    assert not torch.equal(record.W_dec[0], record.W_dec[3])
    # Step 4 is the first per-latent step; from the same state, its move is scale x the full one.
    moved = float((record.W_dec[4] - record.W_dec[3]).norm())
    full_move = float((full.W_dec[4] - full.W_dec[3]).norm())
    assert moved == pytest.approx(scale * full_move, rel=0.02, abs=1e-7)
    if scale == 0:
        assert all(torch.equal(record.W_dec[3], w) for w in record.W_dec[4:]), "bit for bit"
    # The encoder and the thresholds keep learning in the per-latent half.
    assert not torch.equal(record.W_enc[3], record.W_enc[-1])
    assert not torch.equal(record.log_threshold[4], record.log_threshold[-1])


def test_warmup_without_an_l0_to_aim_at_is_refused(tmp_path):
    cfg = compose_config(["sae=jumprelu", *TINY_RUN, "sae.target_l0=null"], tmp_path)
    with pytest.raises(ValueError, match="threshold_warmup_fraction.*target_l0"):
        build(cfg)
