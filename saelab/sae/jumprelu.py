"""JumpReLU (Rajamanoharan et al. 2024, "Jumping Ahead", arXiv 2407.14435), docs/maths.md §1, §8.

    z     = x @ W_enc + b_enc
    f     = z * H(z - theta)                 theta = exp(log_threshold) > 0, per latent
    x_hat = f @ W_dec + b_dec
    loss  = mean_b sum_d (x - x_hat)^2 + lambda * mean_b sum_i H(z_i - theta_i)

The Heaviside step H has zero gradient almost everywhere, so theta learns only through the
straight-through pseudo-derivatives of the paper's eqs. 11-12 (the reference autograd Functions
below; training runs the fused and sparse versions in fused.py and sparse.py, tested equal).
The L0 step is applied to the pre-activation z (not to f), which keeps both halves of the kernel
window.

The family: ``JumpReLUSAE`` (inference: what an export holds), ``JumpReLUTrainConfig`` (every
``sae.*`` key and its default: the paper's SAE and estimators driven by saelab's recipe, chosen
by measurement; the paper's own recipe is conf/sae/jumprelu_paper.yaml) and ``JumpReLUObjective``
(the loss, the L0 controller, the threshold warm-up and the bandwidth estimate).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from operator import attrgetter

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import SAE, SAEConfig, require_choice
from .fused import jumprelu_with_l0
from .kernels import KERNEL_SUPPORT, KERNELS
from .objective import Encoded, Objective, Step, Sync
from .registry import Family, register
from .sparse import SelectedJumpReLU, above, encode_selected, use_sparse, where
from .train_config import TrainConfig, check


# --- the paper's estimators, op by op (the reference the fused passes are tested against) -------
def _sum_to_threshold(grad: Tensor, threshold: Tensor) -> Tensor:
    """Reduce a [..., M] gradient over the batch dimensions to the threshold's shape/dtype."""
    return grad.reshape(-1, grad.shape[-1]).sum(0).to(threshold.dtype)


class JumpReLUFunction(torch.autograd.Function):
    """f = z * H(z - theta). d/dz = H(z - theta); d/dtheta = -(theta/eps) K((z - theta)/eps)."""

    @staticmethod
    def forward(ctx, z: Tensor, threshold: Tensor, bandwidth: float, kernel: str) -> Tensor:
        ctx.save_for_backward(z, threshold)
        ctx.bandwidth, ctx.kernel = bandwidth, kernel
        return z * (z > threshold).to(z.dtype)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        z, threshold = ctx.saved_tensors
        eps, K = ctx.bandwidth, KERNELS[ctx.kernel]
        theta = threshold.to(z.dtype)
        grad_z = grad_out * (z > theta).to(z.dtype)
        grad_theta = grad_out * (-(theta / eps) * K((z - theta) / eps))
        return grad_z, _sum_to_threshold(grad_theta, threshold), None, None


class StepFunction(torch.autograd.Function):
    """H(z - theta). d/dz = 0 (L0 sends no gradient to the encoder); d/dtheta = -(1/eps) K(.)."""

    @staticmethod
    def forward(ctx, z: Tensor, threshold: Tensor, bandwidth: float, kernel: str) -> Tensor:
        ctx.save_for_backward(z, threshold)
        ctx.bandwidth, ctx.kernel = bandwidth, kernel
        return (z > threshold).to(z.dtype)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        z, threshold = ctx.saved_tensors
        eps, K = ctx.bandwidth, KERNELS[ctx.kernel]
        theta = threshold.to(z.dtype)
        grad_theta = grad_out * (-(1.0 / eps) * K((z - theta) / eps))
        return None, _sum_to_threshold(grad_theta, threshold), None, None


class ExpIdentityGrad(torch.autograd.Function):
    """theta = exp(t) whose backward passes d/dtheta through unchanged as d/dt. This is the
    Anthropic-style parametrisation (``threshold_grad="direct"``): it differs from autodiff
    through exp by a factor theta."""

    @staticmethod
    def forward(ctx, t: Tensor) -> Tensor:
        return t.exp()

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return grad


# --- inference -----------------------------------------------------------------------------------
@dataclass
class JumpReLUConfig(SAEConfig):
    architecture = "jumprelu"


class JumpReLUSAE(SAE):
    config_class = JumpReLUConfig
    saelens_architecture = "jumprelu"
    saelens_transcoder = "jumprelu_{skip}transcoder"

    def __init__(self, cfg: JumpReLUConfig):
        super().__init__(cfg)
        # log(theta) so theta stays positive; kept fp32 even under bf16 autocast (in bf16 a
        # threshold barely moves under Adam, a known SAELens bug). Training sets its start
        # (``threshold_init``); 1e-3 is the paper's.
        self.log_threshold = nn.Parameter(torch.full((self.d_sae,), math.log(1e-3)))

    @classmethod
    def shaped_like(cls, sae: SAE) -> JumpReLUSAE:
        """A fresh JumpReLU SAE with ``sae``'s shape, transcoder form, dtype and device: what
        another family's export fills in."""
        cfg = sae.cfg
        config = JumpReLUConfig(
            d_in=sae.d_in,
            d_sae=sae.d_sae,
            transcoder=cfg.transcoder,
            skip_connection=cfg.skip_connection,
        )
        return cls(config).to(sae.W_dec)

    @property
    def threshold(self) -> Tensor:
        return self.log_threshold.exp()

    def encode(self, x: Tensor) -> Tensor:
        z = self.pre_acts(x)
        return z * (z > self.threshold.detach()).to(z.dtype)

    @torch.no_grad()
    def fold_activation_scale(self, scale: float) -> None:
        super().fold_activation_scale(scale)
        self.log_threshold.add_(math.log(scale))  # theta * scale


# --- training ------------------------------------------------------------------------------------
JUMPRELU_LR = 3e-3
"""Adam lr on activations d_in = 256 wide, scaled as 1/sqrt(d_in) elsewhere (4.2e-3 on
tiny-gemma-2's 128) and the same at every width: an Adam step turns a unit-norm row of d_in
coordinates by about lr * sqrt(d_in), while a wider dictionary's latents each see fewer tokens
and already move less per step (docs/maths.md §3.6). Chosen on the tune half of the robustness
matrix (docs/robustness.md)."""


def d_in_factor(d_in: int) -> float:
    """sqrt(d_in / 256): the default lr is JUMPRELU_LR divided by it, and the thresholds' lr is
    the lr multiplied by it, so they step at JUMPRELU_LR at every d_in. Adam moves log theta by
    about its lr a step, a relative change; it keeps pace with pre-activations that move by about
    lr * sqrt(d_in) only if the lr rule's 1/sqrt(d_in) is taken back off it (docs/maths.md §8.9)."""
    return math.sqrt(d_in / 256)


PREACT_COEFFICIENT = 1e-3
"""The pre-activation loss's weight when a run aims at an L0: chosen on the tune half of the
robustness matrix (docs/robustness.md)."""


@dataclass
class JumpReLUExperimental:
    """Research options of ``sae=jumprelu`` (``sae.experimental.*``): alternatives measured and
    not chosen for the recipe, kept so the measurements can be rerun (docs/configuration.md,
    docs/robustness.md). Each default is the recipe's choice."""

    target_l0_method: str = "dual"
    """'dual' (the recipe): lambda is a Lagrange multiplier for L0 = target_l0, set every step by
    a PI controller on e = L0_batch / target_l0 - 1 (Sohrabi et al. 2024): lambda = lambda_I +
    target_l0_kp * e, then lambda_I += target_l0_lr * e, lambda_I starting at 0. lambda may go
    negative: early on the reconstruction's own threshold gradient can push L0 under the
    target, which no penalty can undo. 'quadratic': a fixed quadratic_coefficient * (L0 /
    target_l0 - 1)^2 (Gemma Scope 2 style), which settles short of the target (docs/maths.md §8)."""
    quadratic_coefficient: float = 5e-4
    """The quadratic penalty's weight (target_l0_method = 'quadratic')."""
    target_l0_lr: float = 1e-2
    """Integral gain (dual-ascent step size) of the L0 controller."""
    target_l0_kp: float = 5.0
    """Proportional gain of the L0 controller."""
    threshold_warmup: str = "per_token"
    """The warm-up's selection. 'per_token' (the recipe): each token keeps its L0 largest
    pre-activations (TopK's selection); the stored thresholds make each latent fire on the batch
    as often as TopK chose it. 'pooled': one threshold for every latent, the value the batch's
    L0 * B largest pre-activations exceed (BatchTopK's selection). 'per_latent': each latent at
    its own quantile, all firing equally often."""
    threshold_warmup_ema: float | None = 0.99
    """The thresholds the warm-up hands over are an exponential moving average (this decay, in
    log theta, over optimiser steps; 0.99 is about 100 steps) of each step's batch thresholds:
    one batch gives each latent a few dozen firings to set its quantile from, the average some
    thousands (docs/maths.md §8.3). None = the last batch's. On warm-ups under 400 steps the
    average spans at most a quarter of the warm-up (``warmup_decay``)."""
    threshold_lr_scale: float | None = None
    """The thresholds' learning rate as a multiple of ``lr``, in their own Adam parameter group
    (docs/maths.md §8.9). None = the recipe's sqrt(d_in / 256), which takes the lr rule's
    1/sqrt(d_in) back off the thresholds; 1 = one lr for every parameter (the paper's)."""
    threshold_grad: str = "autodiff"
    """'autodiff': d/dlog_threshold by the chain rule through exp (SAELens, the JAX port);
    'direct': the theta pseudo-derivative used as is for log_threshold (Anthropic's variant)."""
    threshold_init_l0: float | None = None
    """If set, thresholds start from data: each latent at the quantile of its pre-activations
    that makes it fire on a fraction threshold_init_l0 / d_sae of tokens (also an L0 for the
    warm-up and the pre-activation window to aim at when target_l0 is None)."""
    kernel: str = "rectangle"
    """STE kernel K: rectangle (the paper's), triangle, gaussian or epanechnikov."""
    preact_window: float = 100.0
    """A latent is silent for the pre-activation loss when it has not fired for this many times
    d_sae / L0 tokens (the mean interval between a latent's firings at the target L0). 0 =
    every latent, every step."""
    aux_k: int | None = None
    """Dead latents used by AuxK; None means d_in // 2."""


@dataclass
class JumpReLUTrainConfig(TrainConfig, JumpReLUConfig):
    target_l0: float | None = 32
    """The L0 training steers to: lambda is a Lagrange multiplier set every step by a controller
    (docs/maths.md §8.1). None = the paper's fixed penalty ``l0_coefficient * L0``."""
    l0_coefficient: float = 5e-4
    """lambda of the paper's fixed L0 penalty, used when target_l0 is None (~5e-4 gave Gemma
    Scope L0 ~50-100)."""
    threshold_warmup_fraction: float = 0.8
    """For this first fraction of the run each step keeps, per token, the target_l0 largest
    pre-activations (TopK's selection) and stores the thresholds that fire each latent as often;
    then the STE learns per-latent thresholds from an average of those. The dictionary is learnt
    under TopK's selection, which has no price per firing and so no reason to merge co-firing
    features, and L0 cannot collapse early (docs/maths.md §8.3). 0 = off (the paper). A run whose
    per-latent part would be shorter than the controller's response time is all warm-up."""
    decoder_lr_after_warmup: float = 0.3
    """After the warm-up the dictionary W_dec moves at this fraction of the lr (0: it stays as the
    warm-up learnt it). The per-latent part then mostly fits the encoder, b_dec and the
    thresholds to the dictionary TopK's selection found, instead of merging co-firing features
    into one latent to save L0, as a full-rate decoder does (docs/maths.md §8.5)."""
    bandwidth: float = 0.05
    """eps, the STE kernel bandwidth, in units of the normalised activations (the paper: 1e-3)."""
    threshold_init: float = 1e-3
    """Initial theta for every latent (the paper's)."""
    aux_coefficient: float = 1.0
    """Weight of AuxK (TopK's loss on dead latents; not in the paper): on small budgets latents
    that fall below their threshold before they learn a feature get no gradient again."""
    preact_coefficient: float | None = None
    """lambda_p of the pre-activation loss lambda_p * sum_i ||W_dec_i|| mean_b ReLU(theta_i -
    z_bi) over the latents that have not fired for a while (``experimental.preact_window``). It
    pulls a silent latent's pre-activations up to its threshold, the gradient neither the STE
    nor AuxK gives it. 0 = off; None = ``PREACT_COEFFICIENT`` when the run aims at an L0."""
    adam_beta1: float = 0.9
    lr_decay_fraction: float = 0.5
    """The lr decays linearly to 0 over this final fraction of the run: with the default warm-up,
    all of the per-latent part. Without it silent latents ratchet their thresholds up on long
    runs (docs/maths.md §8.7)."""
    sparsity_warmup_steps: int | None = 10_000
    experimental: JumpReLUExperimental = field(default_factory=JumpReLUExperimental)
    """Research options (``JumpReLUExperimental``), not part of the recipe."""

    def default_lr(self) -> float:
        return JUMPRELU_LR / d_in_factor(self.d_in)

    def __post_init__(self) -> None:
        if isinstance(self.experimental, dict):  # from a checkpoint's or export's hparams
            self.experimental = JumpReLUExperimental(**self.experimental)
        super().__post_init__()
        ex = self.experimental
        check(self, "l0_coefficient", self.l0_coefficient >= 0, "a number >= 0")
        check(self, "bandwidth", self.bandwidth > 0, "a number > 0")
        scale = self.decoder_lr_after_warmup
        check(self, "decoder_lr_after_warmup", 0 <= scale <= 1, "in [0, 1]")
        check(self, "threshold_init", self.threshold_init > 0, "a number > 0")
        check(self, "aux_coefficient", self.aux_coefficient >= 0, "a number >= 0")
        if ex.aux_k is None:
            ex.aux_k = max(1, self.d_in // 2)
        ok = 0 < ex.aux_k <= self.d_sae
        check(self, "experimental.aux_k", ok, f"an integer in [1, d_sae={self.d_sae}]")
        require_choice(self, "experimental.kernel", tuple(KERNELS))
        require_choice(self, "experimental.threshold_grad", ("autodiff", "direct"))
        for key in ("experimental.threshold_init_l0", "target_l0"):
            value = attrgetter(key)(self)
            ok = value is None or 0 < value <= self.d_sae
            check(self, key, ok, f"in (0, d_sae={self.d_sae}]")
        require_choice(self, "experimental.target_l0_method", ("dual", "quadratic"))
        for key in ("quadratic_coefficient", "target_l0_lr", "target_l0_kp", "preact_window"):
            check(self, f"experimental.{key}", getattr(ex, key) >= 0, "a number >= 0")
        if ex.threshold_lr_scale is None:
            ex.threshold_lr_scale = d_in_factor(self.d_in)
        check(self, "experimental.threshold_lr_scale", ex.threshold_lr_scale > 0, "> 0 or null")
        frac = self.threshold_warmup_fraction
        check(self, "threshold_warmup_fraction", 0 <= frac <= 1, "in [0, 1]")
        ema = ex.threshold_warmup_ema
        ok = ema is None or 0 <= ema < 1
        check(self, "experimental.threshold_warmup_ema", ok, "in [0, 1) or null")
        choices = ("pooled", "per_latent", "per_token")
        require_choice(self, "experimental.threshold_warmup", choices)
        if self.preact_coefficient is None:
            self.preact_coefficient = 0.0 if self.reference_l0 is None else PREACT_COEFFICIENT
        check(self, "preact_coefficient", self.preact_coefficient >= 0, "a number >= 0")
        if self.preact_coefficient > 0 and ex.preact_window > 0 and self.reference_l0 is None:
            raise ValueError(
                f"experimental.preact_window={ex.preact_window} is in units of d_sae / L0 tokens "
                "and needs an L0: set sae.target_l0, or sae.preact_coefficient=0."
            )
        if frac > 0 and self.reference_l0 is None:
            raise ValueError(
                f"threshold_warmup_fraction={frac} needs an L0 to aim at: set sae.target_l0, "
                "or sae.threshold_warmup_fraction=0."
            )

    @property
    def dual_target(self) -> bool:
        return self.target_l0 is not None and self.experimental.target_l0_method == "dual"

    @property
    def reference_l0(self) -> float | None:
        """The L0 the run aims at: target_l0, else experimental.threshold_init_l0."""
        return self.target_l0 if self.target_l0 is not None else self.experimental.threshold_init_l0


# Entries of z the per-token warm-up's rate-matched thresholds copy (as z^T) at once: 16M, 64 MiB
# of float32 values.
PER_TOKEN_BLOCK_ELEMENTS = 1 << 24


# The hand-over average spans at most this fraction of the warm-up: its first steps set thresholds
# for an encoder that has since moved, and must be forgotten by the hand-over (docs/maths.md §8.3).
WARMUP_AVERAGE_SPAN = 0.25


def warmup_decay(ema: float, warmup_steps: float) -> float:
    """The warm-up average's decay: ``ema``, shortened on warm-ups under 1 / (span * (1 - ema))
    steps so that its horizon 1 / (1 - decay) is at most WARMUP_AVERAGE_SPAN of the warm-up
    (a 10-step warm-up averages about its last 2.5 steps; 400 steps and more keep ``ema``)."""
    if warmup_steps <= 0:
        return ema
    return min(ema, max(0.0, 1.0 - 1.0 / (WARMUP_AVERAGE_SPAN * warmup_steps)))


def _kth_largest(values: Tensor, k: int, dim: int, sync: Sync) -> Tensor:
    """The k-th largest entry along ``dim`` (1-based, clamped to what there is), over ``values``
    and the same-shaped ``values`` of every rank: the k largest of the union are among the union
    of each rank's k largest, so only those travel."""
    k_local = max(1, min(k, values.shape[dim]))
    top = values.topk(k_local, dim=dim).values  # sorted, largest first
    if sync.world_size == 1:
        return top.select(dim, k_local - 1)
    top = torch.cat(sync.all_gather(top.contiguous()).unbind(0), dim=dim)
    k = max(1, min(k, top.shape[dim]))
    return top.topk(k, dim=dim).values.select(dim, k - 1)


class JumpReLUObjective(Objective):
    """The paper's loss and estimators, with saelab's L0 controller, threshold warm-up and
    data-driven bandwidth as training state (docs/maths.md §1, §8)."""

    threshold_init_tokens = 16_384

    def __init__(self, cfg: JumpReLUTrainConfig):
        super().__init__(cfg)
        self.cfg: JumpReLUTrainConfig = cfg
        self.ex = cfg.experimental
        self.init_tokens = (
            self.threshold_init_tokens if self.ex.threshold_init_l0 is not None else 0
        )
        d_sae = cfg.d_sae
        if cfg.dual_target:
            # The controller's integral lambda_I, and lambda as last used.
            self.register_buffer("l0_integral", torch.tensor(0.0))
            self.register_buffer("l0_multiplier", torch.tensor(0.0))
        if self.ex.threshold_warmup_ema is not None:
            # The warm-up's averaged log-thresholds and the steps averaged so far (checkpointed).
            self.register_buffer("warmup_log_threshold", torch.zeros(d_sae))
            self.register_buffer("warmup_steps", torch.zeros((), dtype=torch.long))
        self.warmup_threshold: Tensor | None = None  # this step's, stored after the optimiser step
        self.warmup_decay = self.ex.threshold_warmup_ema or 0.0
        self.row_threshold: Tensor | None = None  # per-token warm-up: this step's [B] thresholds

    @property
    def aux_k(self) -> int:
        return self.ex.aux_k

    # --- set-up ------------------------------------------------------------------------------
    @torch.no_grad()
    def init_sae(self, sae: JumpReLUSAE) -> None:
        sae.log_threshold.fill_(math.log(self.cfg.threshold_init))

    @torch.no_grad()
    def init_from_data(self, sae: JumpReLUSAE, x: Tensor, target: Tensor | None = None) -> None:
        """theta_i = the (1 - l0/d_sae) quantile of z_i over the sample x (threshold_init_l0):
        every latent fires on the same fraction of it, and L0 on it is threshold_init_l0."""
        if self.ex.threshold_init_l0 is None:
            return
        z = sae.pre_acts(x[: self.threshold_init_tokens])
        theta = self.quantile_thresholds(z, self.ex.threshold_init_l0, pooled=False, local=True)
        sae.log_threshold.copy_(theta.log())

    # --- the step ----------------------------------------------------------------------------
    def wants_sparse(self, sae, device, density) -> bool:
        # The sparse path selects the kernel's window, which must be finite.
        return use_sparse(device, density) and math.isfinite(KERNEL_SUPPORT[self.ex.kernel])

    def threshold(self, sae: JumpReLUSAE) -> Tensor:
        if self.ex.threshold_grad == "direct":
            return ExpIdentityGrad.apply(sae.log_threshold)
        return sae.log_threshold.exp()

    def encode_dense(self, sae: JumpReLUSAE, x: Tensor, step: Step) -> Encoded:
        z = sae.pre_acts(x)
        theta = self.threshold_for_step(sae, z.detach(), step)
        eps, kernel = self.cfg.bandwidth, self.ex.kernel
        terms = {}
        if self.cfg.preact_coefficient > 0:  # reads z before the fused backward overwrites it
            terms["preact"] = self.preact_loss_dense(sae, z, theta, self.silent_latents(step, z))
        if self.row_threshold is None:
            # One fused pass for f and the L0 term (and one for both STEs in the backward). z is
            # private to this step, so the backward may reuse its buffer for dL/dz.
            f, l0 = jumprelu_with_l0(z, theta, eps, kernel, overwrite_z=True)
        else:
            # Per-token warm-up: TopK's features, the STEs evaluated at theta (the stored
            # rate-matched thresholds) through a zero-valued twin on the detached z.
            fire = z.detach() >= self.row_threshold[:, None]
            f_ste, l0_ste = jumprelu_with_l0(z.detach(), theta, eps, kernel)
            f = z * fire + (f_ste - f_ste.detach())
            l0 = fire.sum(-1).to(l0_ste.dtype).mean() + (l0_ste - l0_ste.detach())
        terms = {"l0": self.penalty(l0, step), **terms}
        return Encoded(l0=l0, terms=terms, f=f, z=z)

    def encode_sparse(self, sae: JumpReLUSAE, x: Tensor, step: Step) -> Encoded:
        with torch.no_grad():
            z = sae.pre_acts(x)
        theta = self.threshold_for_step(sae, z, step)
        eps, kernel = self.cfg.bandwidth, self.ex.kernel
        with torch.no_grad():
            # 1% wider than the kernel's support: extra entries get K = 0 and weight 0, and
            # rounding at the window's edge cannot drop an entry the dense path would count.
            half_width = eps * KERNEL_SUPPORT[kernel] * 1.01
            reach = theta.detach() - half_width  # every entry a kernel window can reach
            if self.row_threshold is None:
                sel = above(z, reach)
            else:  # and the entries TopK keeps
                sel = where(z, (z > reach) | (z >= self.row_threshold[:, None]))
        values = encode_selected(sel, x, sae.W_enc, sae.b_enc)
        n_rows = x.shape[0]
        if self.row_threshold is None:
            acts, l0 = SelectedJumpReLU.apply(values, theta, eps, kernel, sel.cols, n_rows)
        else:  # as on the dense path
            fire = sel.values >= self.row_threshold[sel.rows]
            acts_ste, l0_ste = SelectedJumpReLU.apply(
                values.detach(), theta, eps, kernel, sel.cols, n_rows
            )
            acts = values * fire + (acts_ste - acts_ste.detach())
            l0 = fire.sum().to(l0_ste.dtype) / n_rows + (l0_ste - l0_ste.detach())
        terms = {"l0": self.penalty(l0, step)}
        if self.cfg.preact_coefficient > 0:
            silent = self.silent_latents(step, z)
            terms["preact"] = self.preact_loss_sparse(sae, x, sel, values, theta, silent)
        return Encoded(l0=l0, terms=terms, sel=sel, acts=acts, z=z)

    # --- the pre-activation loss ---------------------------------------------------------------
    def silent_latents(self, step: Step, z: Tensor) -> Tensor:
        """[d_sae] latents that have not fired for the pre-activation loss's window, from the
        trainer's count of tokens since each latent last fired (none without one)."""
        cfg = self.cfg
        if self.ex.preact_window == 0:
            return torch.ones(z.shape[-1], dtype=torch.bool, device=z.device)
        if step.tokens_since_fired is None:
            return torch.zeros(z.shape[-1], dtype=torch.bool, device=z.device)
        return step.tokens_since_fired >= self.ex.preact_window * cfg.d_sae / cfg.reference_l0

    def preact_loss_dense(
        self, sae: JumpReLUSAE, z: Tensor, theta: Tensor, silent_mask: Tensor
    ) -> Tensor:
        """lambda_p sum_{i silent} ||W_dec_i|| mean_b ReLU(theta_i - z_bi)."""
        silent = torch.nonzero(silent_mask).squeeze(1)
        gap = F.relu(theta[silent] - z.index_select(1, silent)).mean(0)
        norms = sae.W_dec.index_select(0, silent).norm(dim=1)
        return self.cfg.preact_coefficient * (gap * norms).sum()

    def preact_loss_sparse(
        self, sae: JumpReLUSAE, x: Tensor, sel, values: Tensor, theta: Tensor, silent_mask: Tensor
    ) -> Tensor:
        """The same value and gradients without a [B, silent] matrix: ReLU(theta - z) =
        (theta - z) + ReLU(z - theta), the first part summed over rows is linear in the encoder
        (sum_b z_bi = (sum_b x_b) . W_enc_i + B b_enc_i) and the second is nonzero only where
        z > theta, entries the selection holds (docs/maths.md §8.7)."""
        silent = torch.nonzero(silent_mask).squeeze(1)
        n = x.shape[0]
        x_sum = x.sum(0)
        z_sum = x_sum @ sae.W_enc.index_select(1, silent) + n * sae.b_enc.index_select(0, silent)
        th = theta[silent]
        linear = n * th - z_sum  # sum_b (theta_i - z_bi)
        # clamp_min passes the gradient at z = theta (ReLU does not), so the two parts cancel
        # there as the dense ReLU(theta - z)'s zero gradient does: the per-token warm-up's
        # thresholds are entries of z.
        over = (values - theta[sel.cols]).clamp_min(0) * silent_mask[sel.cols]
        excess = torch.zeros_like(theta).index_add(0, sel.cols, over.to(theta.dtype))[silent]
        norms = sae.W_dec.index_select(0, silent).norm(dim=1)
        return self.cfg.preact_coefficient * ((linear + excess) / n * norms).sum()

    def penalty(self, l0: Tensor, step: Step) -> Tensor:
        cfg = self.cfg
        if cfg.target_l0 is None:
            lam = cfg.l0_coefficient * l0
        elif self.ex.target_l0_method == "quadratic":
            lam = self.ex.quadratic_coefficient * (l0 / cfg.target_l0 - 1).pow(2)
        else:
            lam = self.l0_controller(l0) * l0
        return step.sparsity_scale * lam

    @torch.no_grad()
    def l0_controller(self, l0: Tensor) -> Tensor:
        """lambda for this step from this batch's L0 (averaged over ranks, so replicas keep one
        lambda): lambda = lambda_I + kp * e, e = L0 / target - 1; then lambda_I += lr * e."""
        if not self.training:
            return self.l0_multiplier.clone()
        cfg = self.cfg
        error = self.sync.mean(l0.detach().to(self.l0_integral.dtype)) / cfg.target_l0 - 1
        self.l0_multiplier.copy_(self.l0_integral + self.ex.target_l0_kp * error)
        self.l0_integral.add_(self.ex.target_l0_lr * error)
        return self.l0_multiplier.clone()  # a copy: the buffer is updated in place next step

    # --- the threshold warm-up -----------------------------------------------------------------
    def warmup_length(self, step: Step) -> float:
        """The warm-up's length in steps: threshold_warmup_fraction of the run, or all of it when
        the per-latent part would be shorter than the L0 controller's response time
        1 / target_l0_lr (its integral moves lambda by target_l0_lr per step per unit of L0
        error): a per-latent part that short cannot steer L0 and ends far from the target
        (docs/maths.md §8.3)."""
        cfg = self.cfg
        warmup = cfg.threshold_warmup_fraction * step.total
        if warmup > 0 and cfg.dual_target and step.total - warmup < 1 / self.ex.target_l0_lr:
            return step.total
        return warmup

    def update_scales(self, index: int, total: int) -> dict[str, float]:
        scale = self.cfg.decoder_lr_after_warmup
        if scale == 1:
            return {}
        warmup = self.warmup_length(Step(index=index, total=total))
        return {"W_dec": scale} if 0 < warmup <= index else {}

    def warmup_l0(self, step: Step) -> float | None:
        """The L0 this step's thresholds are set to give the batch, or None after the warm-up."""
        if self.training and step.index < self.warmup_length(step):
            return self.cfg.reference_l0
        return None

    def threshold_for_step(self, sae: JumpReLUSAE, z: Tensor, step: Step) -> Tensor:
        """The learnt theta, or during the warm-up this batch's quantile thresholds with the
        learnt theta's graph attached (value of the first, gradient path of the second: DDP needs
        every parameter used). The warm-up's values are stored after the optimiser step."""
        theta = self.threshold(sae)
        l0 = self.warmup_l0(step)
        self.warmup_threshold = self.row_threshold = None
        if l0 is None:
            return theta
        if self.ex.threshold_warmup_ema is not None:
            self.warmup_decay = warmup_decay(self.ex.threshold_warmup_ema, self.warmup_length(step))
        if self.ex.threshold_warmup == "per_token":
            self.row_threshold, self.warmup_threshold = self.per_token_thresholds(z.detach(), l0)
        else:
            pooled = self.ex.threshold_warmup == "pooled"
            self.warmup_threshold = self.quantile_thresholds(z.detach(), l0, pooled)
        return self.warmup_threshold + (theta - theta.detach())

    @torch.no_grad()
    def per_token_thresholds(self, z: Tensor, l0: float) -> tuple[Tensor, Tensor]:
        """TopK's selection and the thresholds that reproduce its firing rates: the [B] row
        thresholds t_b (each row's k-th largest entry, k = round(l0), floored at 1e-6: a row
        keeps its k largest positive entries) and the [d_sae] thresholds theta_i = the
        (c_i + 1)-th largest entry of column i over every rank's rows, c_i = the rows that kept
        latent i, so exactly c_i of them exceed it (a latent never kept gets its maximum)."""
        k = max(1, min(round(l0), z.shape[1]))
        rows = z.topk(k, dim=1).values[:, -1].clamp_min(1e-6)  # z's dtype: compared with z
        counts = (z >= rows[:, None]).sum(0)
        counts = (self.sync.mean(counts.double()) * self.sync.world_size).round().long()
        n = z.shape[0] * self.sync.world_size
        # Columns in blocks by their counts, one block per power of two that c + 1 reaches: a
        # block's top-(c + 1) reaches at most twice any of its columns' own, so the many rarely
        # kept latents never pay for the few kept on most rows (which need nearly a whole
        # column sorted), and a step runs about log2(rows) blocks, not one per few columns.
        # Columns are read as rows of z^T (contiguous memory: about a third faster on a CPU than
        # z's strided columns), one bounded slab of columns at a time, so the transient stays
        # bounded too.
        slab = max(1, PER_TOKEN_BLOCK_ELEMENTS // z.shape[0])
        theta = torch.empty(z.shape[1], dtype=z.dtype, device=z.device)
        for s0 in range(0, z.shape[1], slab):
            z_t = z[:, s0 : s0 + slab].t().contiguous()
            slab_counts = counts[s0 : s0 + slab]
            # The same order and blocks on every rank: counts are synced. The blocks' sizes and
            # largest counts are read from the device once per slab, not once per block.
            sorted_counts, order = slab_counts.sort(stable=True)
            octave = torch.frexp((sorted_counts + 1).double()).exponent  # 2^(e-1) <= c+1 < 2^e
            ends = torch.unique_consecutive(octave, return_counts=True)[1].cumsum(0)
            ends, tops = torch.stack([ends, sorted_counts[ends - 1]]).tolist()
            for j0, j1, top in zip([0, *ends[:-1]], ends, tops):
                cols = order[j0:j1]
                theta[s0 + cols] = self._column_kth(
                    z_t.index_select(0, cols), slab_counts[cols], top + 1
                )
        theta = theta.masked_fill(counts >= n, 0)  # kept on every row: fires wherever positive
        return rows, theta.to(torch.promote_types(z.dtype, torch.float32)).clamp_min(1e-6)

    def _column_kth(self, columns: Tensor, counts: Tensor, k: int) -> Tensor:
        """The (counts_i + 1)-th largest entry of each row of ``columns`` ([latents, rows]: z^T)
        over every rank's rows, given k > max(counts_i)."""
        top = columns.topk(min(k, columns.shape[1]), dim=1).values  # largest first
        if self.sync.world_size > 1:
            top = torch.cat(self.sync.all_gather(top.contiguous()).unbind(0), dim=1)
            top = top.topk(min(k, top.shape[1]), dim=1).values
        return top.gather(1, counts.clamp(max=top.shape[1] - 1)[:, None]).squeeze(1)

    @torch.no_grad()
    def quantile_thresholds(
        self, z: Tensor, l0: float, pooled: bool, local: bool = False
    ) -> Tensor:
        """Thresholds [d_sae] that give the pre-activations z [n, d_sae] an L0 of ``l0``: each
        latent at the quantile of its own column that it exceeds on a fraction l0 / d_sae of the
        rows, or with ``pooled`` one threshold for all, exceeded by the l0 * n largest entries.
        Over every rank's rows together (``local``: this process's only), so data-parallel ranks
        get one process's thresholds on the whole batch. Floored at 1e-6 (theta > 0)."""
        sync = Sync() if local else self.sync
        n, d_sae = z.shape[0] * sync.world_size, z.shape[1]
        if pooled:  # the (m+1)-th largest of all entries is exceeded by exactly m of them
            m = round(n * l0)
            theta = _kth_largest(z.reshape(-1), m + 1, dim=0, sync=sync).expand(d_sae)
        else:
            m = n - round(n * (1 - l0 / d_sae))
            theta = _kth_largest(z, m + 1, dim=0, sync=sync)
        return theta.float().clamp_min(1e-6)

    def lr_scales(self) -> dict[str, float]:
        return {"log_threshold": self.ex.threshold_lr_scale}

    # --- after the step ----------------------------------------------------------------------
    def after_optimizer_step(self, sae: JumpReLUSAE) -> None:
        # The warm-up's thresholds become the parameter's value here, outside the forward, where
        # writing works for a sharded SAE too.
        if self.warmup_threshold is not None:
            log_theta = self.warmup_threshold.log()
            if self.ex.threshold_warmup_ema is not None:
                # The first step's thresholds start the average (the initial theta is no estimate);
                # the weight stays a tensor, so no step waits on the device to read the count.
                decay = self.warmup_decay * (self.warmup_steps > 0)
                self.warmup_log_threshold.lerp_(log_theta.to(self.warmup_log_threshold), 1 - decay)
                self.warmup_steps += 1
                log_theta = self.warmup_log_threshold
            self.sync.assign(sae.log_threshold, log_theta)
            self.warmup_threshold = None

    def after_step(self, sae: JumpReLUSAE, out, step: Step) -> dict[str, Tensor]:
        # Thresholds must be seen to move (with the paper's eps = theta_init = 1e-3 L0 can stay
        # high for long on small budgets).
        theta = sae.threshold.detach()
        logs = {
            "threshold/mean": theta.mean(),
            "threshold/median": theta.median(),
            "threshold/min": theta.min(),
            "threshold/max": theta.max(),
        }
        if self.cfg.dual_target:
            logs["l0_multiplier"] = self.l0_multiplier.clone()
        return logs


FAMILY = register(
    Family(
        name="jumprelu",
        sae=JumpReLUSAE,
        train_config=JumpReLUTrainConfig,
        objective=JumpReLUObjective,
        sparsity_knobs=("target_l0", "l0_coefficient"),
    )
)
