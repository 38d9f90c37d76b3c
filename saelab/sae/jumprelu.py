"""JumpReLU SAE (Rajamanoharan et al. 2024, "Jumping Ahead", arXiv 2407.14435).

    z     = x @ W_enc + b_enc
    f     = z * H(z - theta)                 theta = exp(log_threshold) > 0, per latent
    x_hat = f @ W_dec + b_dec
    loss  = mean_b sum_d (x - x_hat)^2 + lambda * mean_b sum_i H(z_i - theta_i)

The Heaviside step H has zero gradient almost everywhere, so theta learns only through the
straight-through pseudo-derivatives of the paper's eqs. 11-12, implemented below as autograd
Functions. The L0 step is applied to the pre-activation z (not to f), which keeps both halves of
the kernel window; see docs/maths.md §1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .auxk import auxk
from .bandwidth import RULES, kde_bandwidth
from .base import SAE, SAEConfig, SAEOutput, _require, reconstruction_loss, require_choice
from .fused import jumprelu_with_l0
from .kernels import KERNEL_SUPPORT, KERNELS
from .sparse import SelectedJumpReLU, above, decode_selected, encode_selected, use_sparse


def _sum_to_threshold(grad: Tensor, threshold: Tensor) -> Tensor:
    """Reduce a [..., M] gradient over the batch dimensions to the threshold's shape/dtype."""
    return grad.reshape(-1, grad.shape[-1]).sum(0).to(threshold.dtype)


def _world_size() -> int:
    """Ranks in the torch.distributed group (1 when not distributed)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return 1


def _mean_over_ranks(t: Tensor) -> Tensor:
    """t averaged over DDP ranks (a new tensor), so replicas keep one value of training state."""
    world = _world_size()
    if world == 1:
        return t
    t = t.clone()
    torch.distributed.all_reduce(t)
    return t / world


def _kth_largest(values: Tensor, k: int, dim: int, world: int = 1) -> Tensor:
    """The k-th largest entry along ``dim`` (1-based, clamped to what there is), over ``values``
    and, when world > 1, the same-shaped ``values`` of every rank: the k largest of the union
    are among the union of each rank's k largest, so only those travel."""
    k_local = max(1, min(k, values.shape[dim]))
    top = values.topk(k_local, dim=dim).values  # sorted, largest first
    if world == 1:
        return top.select(dim, k_local - 1)
    parts = [torch.empty_like(top) for _ in range(world)]
    torch.distributed.all_gather(parts, top.contiguous())
    top = torch.cat(parts, dim=dim)
    k = max(1, min(k, top.shape[dim]))
    return top.topk(k, dim=dim).values.select(dim, k - 1)


class JumpReLUFunction(torch.autograd.Function):
    """f = z * H(z - theta). d/dz = H(z - theta); d/dtheta = -(theta/eps) K((z - theta)/eps).

    This and ``StepFunction`` are the plain, op-by-op statement of the paper's estimators; the
    SAE trains with ``fused.JumpReLUWithL0``, which computes both in one pass and is tested
    against them."""

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


@dataclass
class JumpReLUConfig(SAEConfig):
    l0_coefficient: float = 5e-4
    """lambda: weight of the L0 penalty (docs/maths.md §1; ~5e-4 gave Gemma Scope L0 ~50-100)."""
    bandwidth: float = 1e-3
    """eps, the STE kernel bandwidth, in units of the normalised activations."""
    kernel: str = "rectangle"
    """STE kernel K: rectangle, triangle, gaussian or epanechnikov (paper: results robust)."""
    threshold_init: float = 1e-3
    """Initial theta for every latent."""
    threshold_init_l0: float | None = None
    """If set, thresholds are instead initialised from data: each latent's theta at the quantile
    of its pre-activations that makes it fire on a fraction threshold_init_l0 / d_sae of tokens,
    so training starts near this L0 rather than at L0 ~ d_sae / 2 (see init_threshold_from_data)."""
    threshold_grad: str = "autodiff"
    """'autodiff': d/dlog_threshold by the chain rule through exp (SAELens, the JAX port);
    'direct': the theta pseudo-derivative used as is for log_threshold (Anthropic's variant)."""
    aux_coefficient: float = 0.0
    """Weight of an AuxK loss on dead latents (as in TopK; 0 = off, the paper's method). Not in
    the JumpReLU paper: on small token budgets latents that fall below their threshold before
    they have learnt a feature get no gradient again, and this revives them."""
    aux_k: int | None = None
    """Dead latents used by AuxK; None means d_in // 2."""
    target_l0: float | None = None
    """If set, training steers L0 to this value instead of applying a fixed penalty; how is
    ``target_l0_method``."""
    target_l0_method: str = "dual"
    """'dual': the L0 penalty's lambda becomes a Lagrange multiplier for the constraint
    L0 = target_l0, set each training step by a PI controller on the relative error
    e = L0_batch / target_l0 - 1 (PI control of Lagrange multipliers, Sohrabi et al. 2024):
    lambda = lambda_I + target_l0_kp * e, then lambda_I <- lambda_I + target_l0_lr * e, with
    lambda_I starting at l0_coefficient. lambda may go negative: on small budgets the
    reconstruction's own threshold gradient can push L0 under the target, which no penalty can
    undo. The proportional term damps the overshoot that pure dual ascent (kp = 0) shows.
    'quadratic': a fixed lambda * (L0 / target_l0 - 1)^2 (Gemma Scope 2 style), which settles
    where its pull balances the reconstruction's, short of the target."""
    target_l0_lr: float = 1e-2
    """Integral gain (dual-ascent step size) of the L0 controller (target_l0_method='dual')."""
    target_l0_kp: float = 5.0
    """Proportional gain of the L0 controller (target_l0_method='dual')."""
    bandwidth_rule: str = "fixed"
    """'fixed': eps = ``bandwidth`` for every latent (the paper). 'silverman' / 'scott': a
    per-latent eps from a kernel-density rule of thumb on the batch's pre-activations, the
    STE's threshold gradient being a KDE of the pre-activation density at the threshold
    (saelab/sae/bandwidth.py has the reasoning and formulas); re-estimated every
    ``bandwidth_update_every`` training steps and smoothed by an EMA."""
    bandwidth_update_every: int = 10
    """Training steps between bandwidth re-estimates (rule != 'fixed')."""

    architecture = "jumprelu"

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(self, "l0_coefficient", self.l0_coefficient >= 0, "a number >= 0")
        _require(self, "bandwidth", self.bandwidth > 0, "a number > 0")
        _require(self, "threshold_init", self.threshold_init > 0, "a number > 0")
        _require(self, "aux_coefficient", self.aux_coefficient >= 0, "a number >= 0")
        if self.aux_k is None:
            self.aux_k = max(1, self.d_in // 2)
        _require(
            self, "aux_k", 0 < self.aux_k <= self.d_sae, f"an integer in [1, d_sae={self.d_sae}]"
        )
        require_choice(self, "kernel", tuple(KERNELS))
        require_choice(self, "threshold_grad", ("autodiff", "direct"))
        require_choice(self, "bandwidth_rule", ("fixed", *RULES))
        _require(
            self, "bandwidth_update_every", self.bandwidth_update_every >= 1, "an integer >= 1"
        )
        if self.threshold_init_l0 is not None:
            _require(
                self,
                "threshold_init_l0",
                0 < self.threshold_init_l0 <= self.d_sae,
                f"in (0, d_sae={self.d_sae}]",
            )
        if self.target_l0 is not None:
            _require(
                self, "target_l0", 0 < self.target_l0 <= self.d_sae, f"in (0, d_sae={self.d_sae}]"
            )
        require_choice(self, "target_l0_method", ("dual", "quadratic"))
        _require(self, "target_l0_lr", self.target_l0_lr >= 0, "a number >= 0")
        _require(self, "target_l0_kp", self.target_l0_kp >= 0, "a number >= 0")

    @property
    def dual_target(self) -> bool:
        return self.target_l0 is not None and self.target_l0_method == "dual"


class JumpReLUSAE(SAE):
    config_class = JumpReLUConfig

    def __init__(self, cfg: JumpReLUConfig):
        super().__init__(cfg)
        self.cfg: JumpReLUConfig = cfg
        # Train log(theta) so theta stays positive; kept fp32 even under bf16 autocast (in bf16
        # a threshold barely moves under Adam, a known SAELens bug).
        self.log_threshold = nn.Parameter(torch.full((self.d_sae,), math.log(cfg.threshold_init)))
        if cfg.bandwidth_rule != "fixed":
            # Training state (in checkpoints, not in exports: inference never uses eps).
            self.register_buffer(
                "bandwidth_estimate", torch.full((self.d_sae,), float(cfg.bandwidth))
            )
            self.register_buffer("bandwidth_updates", torch.zeros((), dtype=torch.long))
        self.warmup_threshold: Tensor | None = None  # see forward(quantile_l0=...)
        if cfg.dual_target:
            # The controller's integral lambda_I, and lambda as last used (training state, like
            # eps: not exported).
            self.register_buffer("l0_integral", torch.tensor(float(cfg.l0_coefficient)))
            self.register_buffer("l0_multiplier", torch.tensor(float(cfg.l0_coefficient)))

    def saelens_cfg(self) -> dict:
        """SAELens's name for this family and the cfg.json fields its loader needs
        (docs/interop.md)."""
        return {"architecture": "jumprelu", "apply_b_dec_to_input": False}

    def export_form(self) -> SAE:
        """The SAE written to disk by ``saelab.io.save_sae`` (this one)."""
        return self

    @property
    def bandwidth(self) -> float | Tensor:
        """The STE bandwidth eps: a float, or a per-latent [d_sae] tensor (the fused estimator
        takes either)."""
        if self.cfg.bandwidth_rule == "fixed":
            return self.cfg.bandwidth
        return self.bandwidth_estimate

    training_state = ("bandwidth_estimate", "bandwidth_updates", "l0_integral", "l0_multiplier")

    @torch.no_grad()
    def update_bandwidth(self, z: Tensor) -> None:
        """Every ``bandwidth_update_every`` training steps, eps <- the rule's per-latent bandwidth
        on this batch's pre-activations z [B, d_sae] (n = B: the estimator one step uses), blended
        into the running estimate with an EMA of 0.9 (the first estimate replaces the initial
        eps). Averaged over DDP ranks so replicas keep one eps."""
        cfg = self.cfg
        if cfg.bandwidth_rule == "fixed" or not self.training:
            return
        if int(self.bandwidth_updates) % cfg.bandwidth_update_every == 0:
            # 2,048 rows are plenty for two quantiles and a standard deviation, and bound the cost.
            estimate = kde_bandwidth(
                z[:2048], cfg.bandwidth_rule, cfg.kernel, n=z.shape[0]
            ).clamp_min(1e-6)
            estimate = _mean_over_ranks(estimate)
            if int(self.bandwidth_updates) == 0:
                self.bandwidth_estimate.copy_(estimate)
            else:
                self.bandwidth_estimate.lerp_(estimate.to(self.bandwidth_estimate.dtype), 0.1)
        self.bandwidth_updates += 1

    @torch.no_grad()
    def l0_controller(self, l0: Tensor) -> Tensor:
        """lambda for this step from this batch's L0 (averaged over DDP ranks, so replicas keep
        one lambda): lambda = lambda_I + kp * e, e = L0 / target - 1; then lambda_I += lr * e.
        In evaluation the last training lambda is returned and nothing moves."""
        if not self.training:
            return self.l0_multiplier.clone()
        l0 = _mean_over_ranks(l0.detach().to(self.l0_integral.dtype))
        cfg = self.cfg
        error = l0 / cfg.target_l0 - 1
        self.l0_multiplier.copy_(self.l0_integral + cfg.target_l0_kp * error)
        self.l0_integral.add_(cfg.target_l0_lr * error)
        return self.l0_multiplier.clone()  # a copy: the buffer is updated in place next step

    @property
    def threshold(self) -> Tensor:
        if self.cfg.threshold_grad == "direct":
            return ExpIdentityGrad.apply(self.log_threshold)
        return self.log_threshold.exp()

    def encode(self, x: Tensor) -> Tensor:
        z = self.pre_acts(x)
        return z * (z > self.threshold.detach()).to(z.dtype)

    def forward(
        self,
        x: Tensor,
        sparsity_scale: float = 1.0,
        dead_mask: Tensor | None = None,
        quantile_l0: float | None = None,
        pooled_quantile: bool = False,
    ) -> SAEOutput:
        """``quantile_l0``: this step uses the thresholds that give this batch L0 = quantile_l0
        (``quantile_thresholds``, pooled or per latent) instead of the learnt ones: the threshold
        warm-up of JumpReLULit. They are left in ``warmup_threshold`` for the caller to store
        after the optimiser step (a parameter written inside a forward would be lost where the
        SAE is sharded). Gradients still reach log_threshold, as DDP needs every parameter used."""
        cfg = self.cfg
        x2 = x.reshape(-1, self.d_in)
        sparse = use_sparse(x.device, self._density) and math.isfinite(KERNEL_SUPPORT[cfg.kernel])
        if sparse:
            # Few active latents: only the encoder product is dense (sparse.py).
            with torch.no_grad():
                z = self.pre_acts(x2)
            theta = self._threshold_for_step(z, quantile_l0, pooled_quantile)
            with torch.no_grad():
                # 1% wider than the kernel's support: extra entries get K = 0 and weight 0, and
                # rounding at the window's edge cannot drop an entry the dense path would count.
                self.update_bandwidth(z)
                window = (
                    theta.detach()
                    - torch.as_tensor(self.bandwidth) * KERNEL_SUPPORT[cfg.kernel] * 1.01
                )
            sel = above(z, window)  # every entry a kernel window can reach (compared in fp32)
            values = encode_selected(sel, x2, self.W_enc, self.b_enc)
            weights, l0 = SelectedJumpReLU.apply(
                values, theta, self.bandwidth, cfg.kernel, sel.cols, x2.shape[0]
            )
            x_hat = decode_selected(sel, weights, self.W_dec) + self.b_dec
        else:
            z = self.pre_acts(x2)
            theta = self._threshold_for_step(z.detach(), quantile_l0, pooled_quantile)
            self.update_bandwidth(z.detach())
            # One fused pass for f and the L0 term (and one for both STEs in the backward). z is
            # private to this forward, so the backward may reuse its buffer for dL/dz.
            f, l0 = jumprelu_with_l0(z, theta, self.bandwidth, cfg.kernel, overwrite_z=True)
            x_hat = self.decode(f)
        self._note_density(x, l0)
        if cfg.target_l0 is None:
            sparsity = cfg.l0_coefficient * l0
        elif cfg.target_l0_method == "quadratic":
            sparsity = cfg.l0_coefficient * (l0 / cfg.target_l0 - 1).pow(2)
        else:
            sparsity = self.l0_controller(l0) * l0
        losses = {
            "mse": reconstruction_loss(x2, x_hat),
            "l0": sparsity_scale * sparsity,
        }
        if dead_mask is not None and cfg.aux_coefficient > 0:
            losses["auxk"] = cfg.aux_coefficient * auxk(
                x2, x_hat, z, dead_mask, self.W_enc, self.b_enc, self.W_dec, cfg.aux_k
            )
        if sparse:
            shape = z.shape
            del z  # never two [B, d_sae] tensors at once
            f = sel.dense(weights, shape)
        lead = x.shape[:-1]
        return SAEOutput(
            x_hat.view(*lead, self.d_in), f.view(*lead, self.d_sae), losses, {"l0": l0.detach()}
        )

    def _threshold_for_step(self, z: Tensor, quantile_l0: float | None, pooled: bool) -> Tensor:
        """The learnt theta, or during the warm-up this batch's quantile thresholds with the
        learnt theta's graph attached (value of the first, gradient path of the second)."""
        theta = self.threshold
        self.warmup_threshold = None
        if quantile_l0 is None or not self.training:
            return theta
        self.warmup_threshold = self.quantile_thresholds(z.detach(), quantile_l0, pooled)
        return self.warmup_threshold + (theta - theta.detach())

    @torch.no_grad()
    def init_threshold_from_data(self, x: Tensor, l0: float) -> None:
        """theta_i = the (1 - l0/d_sae) quantile of z_i over the sample x, floored at 1e-6 (theta
        must stay positive). Every latent then fires on the same fraction of the sample, and the
        expected L0 on it is ``l0``."""
        theta = self.quantile_thresholds(self.pre_acts(x), l0, pooled=False, across_ranks=False)
        self.log_threshold.copy_(theta.log())

    @torch.no_grad()
    def quantile_thresholds(
        self, z: Tensor, l0: float, pooled: bool, across_ranks: bool = True
    ) -> Tensor:
        """Thresholds [d_sae] that give the pre-activations z [n, d_sae] an L0 of ``l0``: each
        latent at the quantile of its own column that it exceeds on a fraction l0 / d_sae of the
        rows, or with ``pooled`` one threshold for all, exceeded by the l0 * n largest entries
        (BatchTopK's selection written as a JumpReLU). Floored at 1e-6 (theta must stay positive).
        With ``across_ranks`` under torch.distributed the quantile is that of every rank's rows
        together (each rank sends only its top candidates), so DDP's thresholds equal one
        process's on the whole batch."""
        world = _world_size() if across_ranks else 1
        n = z.shape[0] * world
        if pooled:  # the (m+1)-th largest of all entries is exceeded by exactly m of them
            m = round(n * l0)
            theta = _kth_largest(z.reshape(-1), m + 1, dim=0, world=world).expand(self.d_sae)
        else:
            m = n - round(n * (1 - l0 / self.d_sae))
            theta = _kth_largest(z, m + 1, dim=0, world=world)
        return theta.float().clamp_min(1e-6)

    @torch.no_grad()
    def fold_activation_scale(self, scale: float) -> None:
        super().fold_activation_scale(scale)
        self.log_threshold.add_(math.log(scale))  # theta * scale
        if self.cfg.bandwidth_rule != "fixed":
            self.bandwidth_estimate.mul_(scale)  # eps is in activation units too
