"""Each family's (fused / sparse) forward and backward equal the plain maths of docs/maths.md written
out op by op here, on fresh random inputs; and under bf16 autocast, parameters, gradients and
thresholds stay float32 while the step computes (approximately) the same function."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from saelab.sae import Step, sparse
from saelab.sae.auxk import auxk_loss
from saelab.sae.jumprelu import JumpReLUFunction, StepFunction
from tests.conftest import FAMILIES, make_training

SPARSE_CASES = set(FAMILIES) | {"jumprelu-triangle", "gated-ri_l1"}  # not the Gaussian STE kernel
SPARSE_CASES |= {"jumprelu-preact", "jumprelu-per_token"}


@pytest.fixture(params=["dense", "sparse"])
def path(request, monkeypatch):
    """Both paths on this CPU: the density limit decides (JumpReLU: its last step's L0). Counts
    the sparse forwards (each builds its dense features with Selection.dense)."""
    monkeypatch.setattr(sparse, "SPARSE_MAX_DENSITY", 1.0 if request.param == "sparse" else -1.0)
    calls = []
    dense = sparse.Selection.dense
    monkeypatch.setattr(
        sparse.Selection, "dense", lambda self, *a: calls.append(1) or dense(self, *a)
    )
    request.node.sparse_calls = calls
    return request.param


def _check_path(request, case, path):
    took_sparse = bool(request.node.sparse_calls)
    assert took_sparse == (path == "sparse" and case in SPARSE_CASES), (
        "the step took the wrong path"
    )


def _step(sae, objective, x, path, dead, since=None) -> Step:
    """The step as the trainer builds it, as if the last step's density had been low (sparse)
    or unknown (dense); the family then decides (TopK from its config, Gaussian JumpReLU never).
    Step 0 of 10: inside a threshold warm-up where the case has one."""
    density = 0.0 if path == "sparse" else None
    sparse_ = objective.wants_sparse(sae, x.device, density)
    return Step(index=0, total=10, dead_mask=dead, tokens_since_fired=since, sparse=sparse_)


def _mse(x, x_hat):
    return (x - x_hat).pow(2).sum(-1).mean()


def _prefix_mse(sae, cfg, x, f):
    """Matryoshka's term: every proper prefix of the dictionary reconstructs x too."""
    ends = [round(fraction * sae.d_sae) for fraction in cfg.prefix_fractions][:-1]
    return sum(_mse(x, f[:, :m] @ sae.W_dec[:m] + sae.b_dec) for m in ends)


def reference_forward(sae, cfg, x, dead, silent=None):
    """(x_hat, feature_acts, losses) by the plain maths, with sparsity_scale 1."""
    arch = cfg.architecture
    if arch in ("jumprelu", "matryoshka_jumprelu"):
        z = x @ sae.W_enc + sae.b_enc
        theta = sae.threshold
        ex, eps = cfg.experimental, cfg.bandwidth
        if cfg.threshold_warmup_fraction > 0 and ex.threshold_warmup == "per_token":
            # TopK's features; the STEs at the thresholds that fire each latent as often as TopK
            # kept it (the (c_i + 1)-th largest of its column), with the learnt theta's gradient.
            k = round(ex.threshold_init_l0)
            kth = z.detach().sort(dim=1, descending=True).values[:, k - 1 : k].clamp_min(1e-6)
            keep = z.detach() >= kth
            column = z.detach().sort(dim=0, descending=True).values
            rate_theta = column.gather(0, keep.sum(0)[None]).squeeze(0).clamp_min(1e-6)
            theta = rate_theta + (theta - theta.detach())
            f_ste = JumpReLUFunction.apply(z.detach(), theta, eps, ex.kernel)
            f = z * keep + (f_ste - f_ste.detach())
            l0_ste = StepFunction.apply(z.detach(), theta, eps, ex.kernel).sum(-1).mean()
            l0 = keep.sum(-1).to(z.dtype).mean() + (l0_ste - l0_ste.detach())
        else:
            f = JumpReLUFunction.apply(z, theta, eps, ex.kernel)
            l0 = StepFunction.apply(z, theta, eps, ex.kernel).sum(-1).mean()
        x_hat = f @ sae.W_dec + sae.b_dec
        losses = {"mse": _mse(x, x_hat), "l0": cfg.l0_coefficient * l0}
        if cfg.preact_coefficient > 0:  # silent latents: as the test set them
            gap = F.relu(theta[silent] - z[:, silent]).mean(0)
            losses["preact"] = cfg.preact_coefficient * (gap * sae.W_dec[silent].norm(dim=1)).sum()
        if cfg.aux_coefficient > 0:
            losses["auxk"] = cfg.aux_coefficient * auxk_loss(x, x_hat, z, dead, sae.W_dec, ex.aux_k)
        if arch == "matryoshka_jumprelu":
            losses["prefix_mse"] = _prefix_mse(sae, cfg, x, f)
        return x_hat, f, losses
    if arch in ("topk", "batchtopk", "matryoshka"):
        z = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
        if arch == "topk":
            v, i = z.topk(cfg.k, dim=-1)
            f = torch.zeros_like(z).scatter(-1, i, F.relu(v))
        else:
            flat = F.relu(z).reshape(-1)
            v, i = flat.topk(cfg.k * z.shape[0])
            f = torch.zeros_like(flat).scatter(0, i, v).view_as(z)
        x_hat = f @ sae.W_dec + sae.b_dec
        losses = {"mse": _mse(x, x_hat)}
        if arch == "matryoshka":
            losses["prefix_mse"] = _prefix_mse(sae, cfg, x, f)
        losses["auxk"] = cfg.aux_coefficient * auxk_loss(x, x_hat, z, dead, sae.W_dec, cfg.aux_k)
        return x_hat, f, losses
    if arch == "gated":
        x_c = x - sae.b_dec
        pi_gate = x_c @ sae.W_enc + sae.b_gate
        pi_mag = x_c @ (sae.W_enc * sae.r_mag.exp()) + sae.b_mag
        f = (pi_gate > 0).to(x.dtype) * F.relu(pi_mag)
        x_hat = f @ sae.W_dec + sae.b_dec
        gate = F.relu(pi_gate)
        ri = cfg.variant == "ri_l1"
        W_dec, b_dec = (sae.W_dec, sae.b_dec) if ri else (sae.W_dec.detach(), sae.b_dec.detach())
        l1 = (gate * W_dec.norm(dim=1)).sum(-1).mean() if ri else gate.sum(-1).mean()
        losses = {
            "mse": _mse(x, x_hat),
            "l1": cfg.l1_coefficient * l1,
            "aux": _mse(x, gate @ W_dec + b_dec),
        }
        return x_hat, f, losses
    assert arch == "relu", f"no plain-maths reference for the {arch!r} family: write one here"
    f = F.relu(x @ sae.W_enc + sae.b_enc)
    x_hat = f @ sae.W_dec + sae.b_dec
    penalty = (f * sae.W_dec.norm(dim=1)).sum(-1).mean()
    return x_hat, f, {"mse": _mse(x, x_hat), "l1": cfg.l1_coefficient * penalty}


CASES = FAMILIES + ["gated-ri_l1", "jumprelu-auxk-gaussian", "jumprelu-triangle"]
CASES += ["jumprelu-preact", "jumprelu-per_token"]


def _make(case, **kw):
    arch, *_variant = case.split("-")
    extra = {
        "gated-ri_l1": {"variant": "ri_l1"},
        "jumprelu-triangle": {"kernel": "triangle"},
        "jumprelu-auxk-gaussian": {"aux_coefficient": 0.5, "aux_k": 8, "kernel": "gaussian"},
        # A window of 1 x d_sae / 8 tokens; the test marks which latents have been silent.
        "jumprelu-preact": {
            "preact_coefficient": 0.7,
            "preact_window": 1.0,
            "threshold_init_l0": 8,
        },
        "jumprelu-per_token": {
            "threshold_warmup_fraction": 0.5,
            "threshold_warmup": "per_token",
            "threshold_init_l0": 8,
            "preact_coefficient": 0.3,
            "preact_window": 1.0,
        },
    }.get(case, {})
    if "jumprelu" in arch:  # a fixed lambda, a window wide enough to catch many pre-activations
        fixed = {"target_l0": None, "threshold_warmup_fraction": 0, "aux_k": 8}
        extra = {**fixed, "threshold_init": 0.3, "bandwidth": 0.5, **extra}
    if "topk" in arch:
        extra = {"aux_k": 8, **extra}
    sae, objective = make_training(arch, **extra, **kw)
    with torch.no_grad():  # away from the symmetric init: biases, scales, decoder norms
        for p in sae.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return sae, objective


def _since(sae) -> torch.Tensor:
    """The trainer's tokens-since-fired count with a third of the latents silent for long."""
    silent = torch.zeros(sae.d_sae, dtype=torch.bool)
    silent[torch.randperm(sae.d_sae)[: sae.d_sae // 3]] = True
    return silent.long() * 1000


@pytest.mark.parametrize("case", CASES)
def test_step_matches_plain_maths(case, path, request):
    sae, objective = _make(case)
    sae = sae.double()
    x = torch.randn(48, 16, dtype=torch.float64) * 2
    dead = torch.zeros(64, dtype=torch.bool)
    dead[torch.randperm(64)[:12]] = True
    since = _since(sae)
    out = sae(x, objective=objective, step=_step(sae, objective, x, path, dead, since))
    grads = torch.autograd.grad(out.loss, list(sae.parameters()))
    _check_path(request, case, path)
    x_hat, f, losses = reference_forward(sae, objective.cfg, x, dead, since >= 1000)
    ref_grads = torch.autograd.grad(sum(losses.values()), list(sae.parameters()))
    tol = {"rtol": 1e-9, "atol": 1e-10}
    torch.testing.assert_close(out.x_hat, x_hat, **tol)
    torch.testing.assert_close(out.feature_acts, f, **tol)
    assert out.losses.keys() == losses.keys()
    for key in losses:
        torch.testing.assert_close(out.losses[key], losses[key], **tol, msg=key)
    torch.testing.assert_close(
        out.metrics["l0"], (f != 0).sum(-1).to(f.dtype).mean(), rtol=1e-6, atol=0, check_dtype=False
    )
    for (name, _), g, r in zip(sae.named_parameters(), grads, ref_grads):
        torch.testing.assert_close(g, r, **tol, msg=name)


@pytest.mark.parametrize("case", CASES)
def test_bf16_autocast_keeps_float32_parameters_and_the_function(case, path):
    """What Lightning's precision=bf16-mixed does on a CPU: torch.autocast around the step."""
    sae, objective = _make(case, d_in=32, d_sae=128)
    x = torch.randn(256, 32) * 2
    dead = torch.zeros(128, dtype=torch.bool)
    dead[:20] = True
    step = _step(sae, objective, x, path, dead, _since(sae))
    ref = sae(x, objective=objective, step=step)
    ref_grads = torch.autograd.grad(ref.loss, list(sae.parameters()))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = sae(x, objective=objective, step=step)
    grads = torch.autograd.grad(out.loss, list(sae.parameters()))
    assert out.loss.dtype == torch.float32
    torch.testing.assert_close(out.loss, ref.loss, rtol=0.05, atol=0.05)
    for (name, p), g, r in zip(sae.named_parameters(), grads, ref_grads):
        assert p.dtype == g.dtype == torch.float32, name
        assert torch.isfinite(g).all(), name
        if r.norm() > 0:
            cos = F.cosine_similarity(g.flatten(), r.flatten(), dim=0)
            # The per-token warm-up evaluates the threshold STE at batch quantiles of z, which
            # bf16 rounding moves, and with them the entries in each kernel window (the value
            # is overwritten after the step; only Adam's moments see this gradient).
            least = 0.9 if case == "jumprelu-per_token" and name == "log_threshold" else 0.97
            assert cos > least, f"{name}: bf16 gradient direction differs (cosine {cos:.3f})"


def test_bf16_threshold_moves_like_float32():
    """The thresholds stay float32 through a bf16-autocast Adam step: a step of lr moves
    log(theta) by ~lr (in bf16, 1e-3 + 1e-5 rounds back to 1e-3)."""
    sae, objective = _make("jumprelu", d_in=32, d_sae=128)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-5, betas=(0.0, 0.999))
    before = sae.log_threshold.detach().clone()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = sae(torch.randn(256, 32) * 2, objective=objective)
    out.loss.backward()
    opt.step()
    moved = sae.log_threshold.detach() - before
    assert sae.log_threshold.dtype == torch.float32
    has_grad = sae.log_threshold.grad != 0
    assert has_grad.any()
    torch.testing.assert_close(
        moved[has_grad].abs(), torch.full_like(moved[has_grad], 1e-5), rtol=0.01, atol=0
    )
