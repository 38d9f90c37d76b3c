"""The JumpReLU recipe's anti-concentration mechanisms (docs/maths.md §8.3, §8.7): the
pre-activation loss on silent latents and the per-token (TopK) threshold warm-up. Each on small real SAEs, on the dense and the sparse path."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from saelab.sae import Step
from saelab.sae.jumprelu import PREACT_COEFFICIENT, JumpReLUTrainConfig
from tests.conftest import make_training
from tests.scale.helpers import ROOT


def _per_token(path: str, **kw):
    sae, objective = make_training(
        "jumprelu", d_in=16, d_sae=64, target_l0=6, threshold_warmup="per_token", **kw
    )
    return sae, objective, Step(index=0, total=100, sparse=path == "sparse")


@pytest.mark.parametrize("path", ["dense", "sparse"])
def test_per_token_warmup_keeps_each_rows_largest_and_stores_topks_rates(path):
    sae, objective, step = _per_token(path)
    with torch.no_grad():
        sae.b_enc.fill_(3.0)  # every pre-activation positive: every row has 6 to keep
        sae.W_enc[:, 0] = 0.0  # a latent no row keeps: z = 0.5, below every other latent
        sae.b_enc[0] = 0.5
    x = torch.rand(2000, 16) + torch.linspace(0, 2, 16)
    out = sae(x, objective=objective, step=step)
    z = sae.pre_acts(x).detach()
    active = out.feature_acts != 0
    assert torch.all(active.sum(1) == 6), "each row keeps exactly target_l0 latents"
    assert torch.equal(active, z >= z.topk(6, dim=1).values[:, -1:]), "... its 6 largest"
    assert torch.equal(out.feature_acts[active], z[active]), "kept at their pre-activation"
    assert out.metrics["l0"].item() == pytest.approx(6.0, abs=1e-9)
    counts = active.sum(0)
    theta = objective.warmup_threshold
    assert torch.equal((z > theta).sum(0), counts), "each latent fires at TopK's rate"
    assert counts.max() > 4 * counts.float().median(), "rates follow the data, not a quota"
    assert counts[0] == 0 and theta[0] == z[:, 0].max(), "never kept: its batch maximum"
    before = sae.log_threshold.detach().clone()
    out.loss.backward()
    assert torch.equal(sae.log_threshold.detach(), before)
    assert sae.log_threshold.grad.abs().sum() > 0, "the learnt thresholds get a gradient"
    objective.after_optimizer_step(sae)
    torch.testing.assert_close(sae.log_threshold.detach(), theta.log())


@pytest.mark.parametrize("elements", [1 << 24, 300 * 3])
def test_per_token_thresholds_in_column_blocks_equal_a_full_sort(monkeypatch, elements):
    """However the columns are blocked (by count, and by the element bound: slabs of 3 columns),
    each theta_i is the (c_i + 1)-th largest entry of its column, read here off a full sort."""
    import saelab.sae.jumprelu as jumprelu

    _, objective, _ = _per_token("dense")
    z = torch.randn(300, 64) + torch.linspace(-1, 2, 64)  # some latents kept on most rows
    monkeypatch.setattr(jumprelu, "PER_TOKEN_BLOCK_ELEMENTS", elements)
    rows, theta = objective.per_token_thresholds(z, 6)
    counts = (z >= rows[:, None]).sum(0)
    assert counts.max() > 100 and counts.min() < 5, "blocks of very different counts"
    ranked = z.sort(dim=0, descending=True).values
    expected = ranked.gather(0, counts.clamp(max=299)[None]).squeeze(0)
    expected = expected.masked_fill(counts >= 300, 0).clamp_min(1e-6)
    assert torch.equal(theta, expected)
    assert torch.equal((z > theta).sum(0), counts)


def test_per_token_warmup_row_with_few_positive_entries_keeps_only_those():
    sae, objective, step = _per_token("dense")
    x = torch.randn(500, 16)
    with torch.no_grad():
        sae.b_enc.fill_(-1.0)  # many rows now have fewer than 6 positive pre-activations
    out = sae(x, objective=objective, step=step)
    z = sae.pre_acts(x).detach()
    active = out.feature_acts != 0
    positive = (z > 0).sum(1)
    assert (positive < 6).any()
    assert torch.equal(active.sum(1), positive.clamp(max=6)), "a JumpReLU never fires below 0"


def _silent_case(path: str, coefficient: float = 0.5):
    sae, objective = make_training(
        "jumprelu",
        d_in=16,
        d_sae=64,
        target_l0=8,
        threshold_warmup_fraction=0,
        preact_coefficient=coefficient,
        preact_window=2.0,  # 2 x 64 / 8 = 16 tokens
        aux_coefficient=0,
    )
    silent = torch.zeros(64, dtype=torch.bool)
    silent[::4] = True
    since = silent.long() * 16  # exactly the window: silent
    since[1] = 15  # one token short of it: not silent
    return sae, objective, silent, Step(tokens_since_fired=since, sparse=path == "sparse")


@pytest.mark.parametrize("path", ["dense", "sparse"])
def test_preact_loss_reaches_only_silent_latents(path):
    sae, objective, silent, step = _silent_case(path)
    with torch.no_grad():
        sae.log_threshold.fill_(0.0)  # theta = 1: most pre-activations below it
    x = torch.randn(256, 16)
    out = sae(x, objective=objective, step=step)
    assert torch.equal(objective.silent_latents(step, x), silent)
    z = sae.pre_acts(x).detach()
    expected = 0.5 * (1.0 - z[:, silent]).clamp_min(0).mean(0).sum()
    torch.testing.assert_close(out.losses["preact"], expected)
    grads = torch.autograd.grad(
        out.losses["preact"], [sae.W_enc, sae.b_enc, sae.log_threshold], allow_unused=True
    )
    for name, g in zip(["W_enc", "b_enc", "log_threshold"], grads):
        moved = g.abs().reshape(-1, 64).sum(0) > 0
        assert torch.equal(moved, silent), f"{name}: only silent latents get the gradient"
    # The pull is upwards: a step against the gradient raises the silent latents' b_enc and
    # lowers their thresholds.
    assert torch.all(grads[1][silent] < 0) and torch.all(grads[2][silent] > 0)


def _train(objective_kw: dict, steps: int) -> list[bool]:
    """A JumpReLU at L0 8 where latent 0 has only negative pre-activations and a threshold
    above all of them (dead: no STE gradient, nothing for AuxK's ReLU); Adam steps; whether
    latent 0 fired on each step."""
    torch.manual_seed(0)
    sae, objective = make_training(
        "jumprelu",
        d_in=16,
        d_sae=64,
        target_l0=8,
        threshold_warmup_fraction=0,
        threshold_init=0.5,
        **objective_kw,
    )
    with torch.no_grad():
        sae.W_enc[:, 0] *= 0.1
        sae.b_enc[0] = -2.0
        sae.log_threshold[0] = 1.0
    opt = torch.optim.Adam(sae.parameters(), lr=1e-2)
    dead = torch.zeros(64, dtype=torch.bool)
    dead[0] = True
    since = torch.zeros(64, dtype=torch.long)  # the trainer's count, kept here as it keeps it
    fired = []
    for i in range(steps):
        x = torch.randn(256, 16)
        step = Step(index=i, total=1000, dead_mask=dead, tokens_since_fired=since.clone())
        out = sae(x, objective=objective, step=step)
        opt.zero_grad()
        out.loss.backward()
        sae.remove_parallel_decoder_grad()  # the trainer's unit-norm decoder (docs/maths.md §0.5)
        opt.step()
        sae.normalize_decoder()
        since += x.shape[0]
        since.masked_fill_(out.feature_acts.amax(0) > 0, 0)
        fired.append(bool((out.feature_acts[:, 0] > 0).any()))
    return fired


def test_preact_loss_revives_a_dead_latent_that_auxk_cannot():
    steps = 200
    without = _train({"aux_coefficient": 1.0, "preact_coefficient": 0.0}, steps)
    assert not any(without), "AuxK alone: a latent with only negative pre-activations stays dead"
    revived = _train({"aux_coefficient": 1.0, "preact_coefficient": 1e-2}, steps)
    assert any(revived), f"the pre-activation loss brings it back within {steps} steps"


def test_preact_window_needs_an_l0_and_bad_values_are_refused():
    with pytest.raises(ValueError, match="preact_window.*target_l0"):
        JumpReLUTrainConfig(
            d_in=8,
            d_sae=32,
            target_l0=None,
            threshold_warmup_fraction=0,
            preact_coefficient=1e-3,
        )
    JumpReLUTrainConfig(  # every latent every step: no L0 needed
        d_in=8,
        d_sae=32,
        target_l0=None,
        threshold_warmup_fraction=0,
        preact_coefficient=1e-3,
        experimental={"preact_window": 0},
    )
    with pytest.raises(ValueError, match="preact_coefficient"):
        JumpReLUTrainConfig(d_in=8, d_sae=32, preact_coefficient=-1)
    with pytest.raises(ValueError, match="threshold_warmup"):
        JumpReLUTrainConfig(d_in=8, d_sae=32, experimental={"threshold_warmup": "per_row"})


def test_the_preact_default_follows_the_l0_target():
    """None (the default) turns the pre-activation loss on with an L0 to count its window in, and
    off for the paper's fixed penalty; the paper's recipe turns it off explicitly."""
    with_target = JumpReLUTrainConfig(d_in=8, d_sae=32, target_l0=4)
    assert with_target.preact_coefficient == PREACT_COEFFICIENT > 0
    paper_penalty = JumpReLUTrainConfig(
        d_in=8, d_sae=32, target_l0=None, threshold_warmup_fraction=0
    )
    assert paper_penalty.preact_coefficient == 0
    paper = OmegaConf.load(ROOT / "conf" / "sae" / "jumprelu_paper.yaml")
    assert paper.preact_coefficient == 0
