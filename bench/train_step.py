"""How close saelab's training step is to the cost of its matrix products. Prints a table.

    OMP_NUM_THREADS=1 python bench/train_step.py                    # ~4-6 min on one CPU core
    OMP_NUM_THREADS=1 python bench/train_step.py --proposed         # with the base.py change
    python bench/train_step.py --shapes 512x8192 --families jumprelu --bf16
    python bench/train_step.py --shapes 128x1024,512x8192,768x24576,2304x18432 --rounds 3
    python bench/train_step.py --compile                            # + torch.compile comparison
    THP_MEM_ALLOC_ENABLE=1 python bench/train_step.py               # see docs/speed.md

For each family and shape (d_in x d_sae, batch 4096), in one run:

(a) matmul: the six products of a dense step as bare torch calls on tensors of the same shapes:
    x @ W_enc and f @ W_dec forward; g @ W_dec^T, f^T @ g, x^T @ g_z, g_z @ W_enc^T backward.
(b) step: the whole training step through the family's LightningModule under a real
    ``pl.Trainer.fit`` (forward, backward, gradient clipping, decoder projection, Adam,
    renormalisation, dead-latent tracking, logging to TensorBoard), on one in-memory batch:
    the time from ``on_train_batch_start`` to ``on_train_batch_end``. A callback runs (a) right
    after every timed step, so the two alternate A, B, A, B on this shared, noisy machine.
(c) fit: ``Trainer.fit`` fed from the activation cache (the DataModule's loader with its
    background prefetch): tokens per second over consecutive steps, data loading included.
    d_in 128 reads the tiny-gemma-2 resid L12 cache (built on first use, ~2 min); other widths
    read a temporary cache of random activations written in the cache's on-disk format.
    In-memory and cache fits alternate for ``--rounds`` rounds.

Medians everywhere; the first step of each fit is dropped (warm-up). Peak memory: the most that
torch allocated at once during one extra (untimed, profiled) forward + backward above what was
already live (parameters, gradients, Adam state), in MiB and in units of one [batch, d_sae]
float32 tensor; "bare" is the same for (a). Runs use the project's trainer defaults (fp32, clip 1.0, log
every 50 steps, a 2,000-step schedule) but stop after a few steps.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lightning.pytorch as pl
from lightning.pytorch.loggers import TensorBoardLogger

from saelab.data import shards
from saelab.data.activations import ActivationDataModule, ActivationsDataConfig
from saelab.data.cache import MANIFEST, ActivationCache
from saelab.fileio import write_json
from saelab.lit import LIT_CLASSES
from saelab.sae import fused

FAMILIES = ["jumprelu", "jumprelu@64", "gated", "topk", "batchtopk", "relu"]
"""``jumprelu@64``: thresholds initialised from data for L0 = 64 (``experimental.threshold_init_l0``), the
regime of a trained JumpReLU SAE, where its sparse path runs; the others start at init."""
MIB = 2**20


# --- (a) the bare products -------------------------------------------------------------------
def bare_products(batch: int, d_in: int, d_sae: int, dtype: torch.dtype):
    """The six products of a dense step, with fresh outputs each call (as in a real step)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, d_in, generator=g).to(dtype)
    W_enc = (torch.randn(d_in, d_sae, generator=g) / d_in**0.5).to(dtype)
    W_dec = (torch.randn(d_sae, d_in, generator=g) / d_sae**0.5).to(dtype)
    g_xhat = torch.randn(batch, d_in, generator=g).to(dtype)

    def run() -> None:
        f = x @ W_enc
        f @ W_dec
        g_f = g_xhat @ W_dec.T
        f.T @ g_xhat
        x.T @ g_f
        g_f @ W_enc.T

    return run


# --- memory ----------------------------------------------------------------------------------
class PeakMemory:
    """The peak of memory allocated by torch above what was live at the start, from the
    profiler's allocation events in time order (independent of what malloc keeps cached)."""

    def __enter__(self):
        self._prof = torch.profiler.profile(
            activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True
        )
        self._prof.__enter__()
        return self

    def __exit__(self, *exc):
        self._prof.__exit__(*exc)
        events = sorted(
            (e for e in self._prof.events() if e.self_cpu_memory_usage),
            key=lambda e: e.time_range.start,
        )
        live = self.rise = 0
        for e in events:
            live += e.self_cpu_memory_usage
            self.rise = max(self.rise, live)


# --- (b) and (c): timing callbacks -----------------------------------------------------------
class StepTimer(pl.Callback):
    """Times each training step (batch start -> batch end), runs ``between`` after each one
    (timed too); stops the fit after ``steps``."""

    def __init__(self, steps: int, between=None):
        self.steps, self.between = steps, between
        self.step_s, self.between_s = [], []
        self._t0 = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        elapsed = time.perf_counter() - self._t0
        if batch_idx > 0:  # the first step of a fit is a warm-up
            self.step_s.append(elapsed)
        if self.between is not None:
            t = time.perf_counter()
            self.between()
            self.between_s.append(time.perf_counter() - t)
        if len(self.step_s) == self.steps:
            trainer.should_stop = True


def step_peak_memory(lit, x: torch.Tensor) -> int:
    """Peak of one forward + backward of the module's SAE (where the [B, d_sae] tensors live;
    the optimiser's state is persistent). Measured outside the Trainer, whose step starts with
    the previous step's leftovers still live, which would hide part of the rise."""
    sae = lit.sae.train()
    x, target = lit.normalize(x)
    step = lit.current_step(x)
    with PeakMemory() as mem:
        out = sae(x, objective=lit.objective, step=step, target=target)
        out.loss.backward()
        del out
    sae.zero_grad(set_to_none=True)
    return mem.rise


class IntervalTimer(pl.Callback):
    """Times consecutive batch ends (everything: data, step, hooks, logging)."""

    def __init__(self, steps: int):
        self.steps, self.intervals, self._last = steps, [], None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        now = time.perf_counter()
        if self._last is not None and batch_idx > 1:
            self.intervals.append(now - self._last)
        self._last = now
        if len(self.intervals) == self.steps:
            trainer.should_stop = True


class InMemory(pl.LightningDataModule):
    """The same batch every step: no data loading at all (for the step time)."""

    def __init__(self, x: torch.Tensor):
        super().__init__()
        self.x = x

    @property
    def batch_size(self) -> int:
        return self.x.shape[0]

    def sample_activations(self, n_tokens: int) -> torch.Tensor:
        return self.x[:n_tokens]

    def mean_squared_norm(self, n_tokens: int, cols: slice | None = None, **_) -> float:
        return float(self.x[:n_tokens, cols or slice(None)].double().pow(2).sum(1).mean())

    def train_dataloader(self):
        return _Repeat(self.x)


class _Repeat:
    def __init__(self, x):
        self.x = x

    def __iter__(self):
        while True:
            yield self.x


class RandomCacheData(ActivationDataModule):
    """The activation DataModule reading a given cache folder instead of building one."""

    def __init__(self, cfg: ActivationsDataConfig, cache: ActivationCache):
        super().__init__(cfg)
        self._cache = cache

    def _open(self) -> None:
        self.train_cache = self.val_cache = self._cache


def random_cache(folder: Path, d_in: int, tokens: int) -> ActivationCache:
    """A cache of random rows in the real on-disk format (content does not affect speed)."""
    folder.mkdir(parents=True)
    x = torch.randn(tokens, d_in, generator=torch.Generator().manual_seed(0))
    entry = shards.write_array(folder / "shard_00000.npy", shards.encode(x, "float32"))
    write_json(
        folder / MANIFEST,
        {
            "key": f"bench-{d_in}",
            "spec": {"dtype": "float32"},
            "d_in": d_in,
            "shards": [entry],
            "mean_squared_norm": float(x.pow(2).sum(1).mean()),
        },
    )
    return ActivationCache(folder, verify="never")


def datamodule(d_in: int, batch: int, tmp: Path):
    cfg = ActivationsDataConfig(d_in=d_in, batch_size=batch, progress=False)
    if d_in == 128:  # the real thing: tiny-gemma-2's residual stream at layer 12
        return cfg.build()
    folder = tmp / f"cache-{d_in}"
    cache = (
        ActivationCache(folder, verify="never")
        if folder.exists()
        else random_cache(folder, d_in, 16 * batch)
    )
    return RandomCacheData(cfg, cache)


def trainer(callback: pl.Callback, precision: str, logdir: Path) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu",
        devices=1,
        precision=precision,
        max_steps=2000,
        max_epochs=-1,
        gradient_clip_val=1.0,
        log_every_n_steps=50,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=TensorBoardLogger(logdir, name="bench"),
        callbacks=[callback],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )


def module(family: str, d_in: int, d_sae: int, proposed: bool):
    name, _, l0 = family.partition("@")
    extra = {"k": 32} if "topk" in name else {}
    if l0:
        extra["experimental"] = {"threshold_init_l0": float(l0)}
    cls = LIT_CLASSES[name]
    if proposed:
        cls = type(f"Proposed{cls.__name__}", (ProposedBase, cls), {})
    return cls(d_in=d_in, d_sae=d_sae, normalization_tokens=16_384, **extra)


class ProposedBase:
    """The change to saelab/lit/base.py proposed in docs/speed.md, to measure it (--proposed):
    dead-latent tracking without a [B, d_sae] boolean pass or a host sync, and fused Adam."""

    @torch.no_grad()
    def track_firing(self, feature_acts: torch.Tensor) -> None:
        fired = feature_acts.reshape(-1, feature_acts.shape[-1]).amax(0) > 0  # activations are >= 0
        fired = self.trainer.strategy.reduce(fired.float(), reduce_op="sum") > 0
        self.tokens_since_fired += (
            feature_acts.numel() // feature_acts.shape[-1] * self.trainer.world_size
        )
        self.tokens_since_fired.masked_fill_(fired, 0)

    def configure_optimizers(self):
        # Lightning's mixed-precision plugin refuses to clip the gradients of a fused optimiser.
        fused = self.trainer.precision not in ("16-mixed", "bf16-mixed")
        optimizer = torch.optim.Adam(self.optimizer_groups(), fused=fused)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self.lr_lambda())
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }


def median_ms(values) -> float:
    return statistics.median(values) * 1e3


def measure(family: str, d_in: int, d_sae: int, args, tmp: Path) -> dict:
    torch.manual_seed(0)
    lit = module(family, d_in, d_sae, args.proposed)
    bare = bare_products(args.batch, d_in, d_sae, torch.float32)
    dm = datamodule(d_in, args.batch, tmp)
    x = dm.sample_activations(args.batch)  # the in-memory batch: real data, first batch
    steps, products, fits = [], [], []
    for _ in range(args.rounds):
        timer = StepTimer(args.steps, between=bare)
        trainer(timer, "32-true", tmp / "logs").fit(lit, datamodule=InMemory(x))
        steps += timer.step_s
        products += timer.between_s
        interval = IntervalTimer(args.steps)
        trainer(interval, "32-true", tmp / "logs").fit(lit, datamodule=dm)
        fits += interval.intervals
    peak = step_peak_memory(lit, x)
    with PeakMemory() as bare_mem:
        bare()
    row = {
        "family": family,
        "shape": f"{d_in}x{d_sae}",
        "matmul": median_ms(products),
        "step": median_ms(steps),
        "fit_tok_s": args.batch / statistics.median(fits),
        "fit_ms": median_ms(fits),
        "peak": peak,
        "bare_peak": bare_mem.rise,
        "unit": args.batch * d_sae * 4,
    }
    if args.bf16:
        bare16 = bare_products(args.batch, d_in, d_sae, torch.bfloat16)
        steps16, products16 = [], []
        for _ in range(args.rounds):
            timer = StepTimer(args.steps, between=bare16)
            trainer(timer, "bf16-mixed", tmp / "logs").fit(lit, datamodule=InMemory(x))
            steps16 += timer.step_s
            products16 += timer.between_s
        row.update(matmul16=median_ms(products16), step16=median_ms(steps16))
        dtypes = {p.dtype for p in lit.sae.parameters()}
        assert dtypes == {torch.float32}, f"bf16-mixed changed the master weights to {dtypes}"
    return row


# --- torch.compile on the fused part ---------------------------------------------------------
def compile_comparison(args) -> list[str]:
    """JumpReLU's elementwise step (f, L0, both STEs; z given) at 512 x 8192: eager op by op,
    the fused Function, and torch.compile of the op-by-op version (inductor fuses the graph)."""
    batch, d_sae, eps = args.batch, 8192, 1e-3
    theta = torch.full((d_sae,), eps, requires_grad=True)
    z0, g = torch.randn(batch, d_sae) * 0.01, torch.randn(batch, d_sae)

    def plain(z, th):  # the pseudo-derivatives as detached coefficients: traceable by dynamo
        H = (z > th).to(z.dtype)
        K = ((z - th).abs() < eps / 2).to(z.dtype)
        c_f, c_l0 = (-(th / eps) * K).detach(), (-(1 / eps) * K).detach()
        f = z * H + (th * c_f - (th * c_f).detach())
        l0 = (H + (th * c_l0 - (th * c_l0).detach())).sum(-1).mean()
        return f, l0

    def run(fn):
        def step():
            z = (z0 + 0).requires_grad_()
            f, l0 = fn(z, theta)
            torch.autograd.backward([f, l0], [g, torch.ones(())])

        return step

    t = time.perf_counter()
    compiled = torch.compile(plain)
    run(compiled)()
    compile_s = time.perf_counter() - t
    variants = {
        "eager, op by op": run(plain),
        "fused Function (saelab)": run(
            lambda z, th: fused.jumprelu_with_l0(z, th, eps, "rectangle")
        ),
        "torch.compile, op by op": run(compiled),
    }
    times = {k: [] for k in variants}
    for _ in range(args.rounds + 2):
        for name, fn in variants.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    lines = [
        (
            f"\nJumpReLU elementwise forward+backward, z [{batch}, {d_sae}] given (torch.compile took "
            f"{compile_s:.0f} s to compile):\n"
        ),
        "| variant | ms |",
        "|---|---|",
    ]
    lines += [f"| {name} | {median_ms(v):.0f} |" for name, v in times.items()]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument(
        "--shapes", default="128x1024,512x8192", help="d_in x d_sae, comma-separated"
    )
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per fit")
    parser.add_argument("--rounds", type=int, default=1, help="in-memory / cache fit pairs")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--bf16", action="store_true", help="also time bf16-mixed (autocast)")
    parser.add_argument("--compile", action="store_true", help="also compare torch.compile")
    parser.add_argument(
        "--proposed", action="store_true", help="with the base.py change of docs/speed.md"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for d_in, d_sae in shapes:
            for family in args.families.split(","):
                t = time.perf_counter()
                rows.append(measure(family, d_in, d_sae, args, Path(tmp)))
                print(
                    f"  {family} {d_in}x{d_sae}: {time.perf_counter() - t:.0f} s",
                    file=sys.stderr,
                    flush=True,
                )
    thp = os.environ.get("THP_MEM_ALLOC_ENABLE", "0")
    print(
        f"\ntorch {torch.__version__}, {torch.get_num_threads()} thread(s), batch {args.batch}, "
        f"THP_MEM_ALLOC_ENABLE={thp}, proposed base.py change: {'yes' if args.proposed else 'no'}\n"
    )
    head = "| family | d_in x d_sae | matmul ms | step ms | step/matmul | fit tok/s | fit/step | peak MiB (x B·d_sae·4) | bare peak MiB |"
    if args.bf16:
        head += " bf16 matmul ms | bf16 step ms | bf16 step/matmul |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for r in rows:
        line = (
            f"| {r['family']} | {r['shape']} | {r['matmul']:.0f} | {r['step']:.0f} | "
            f"{r['step'] / r['matmul']:.2f} | {r['fit_tok_s']:,.0f} | {r['fit_ms'] / r['step']:.2f} | "
            f"{r['peak'] / MIB:.0f} ({r['peak'] / r['unit']:.1f}) | {r['bare_peak'] / MIB:.0f} |"
        )
        if args.bf16:
            line += (
                f" {r['matmul16']:.0f} | {r['step16']:.0f} | {r['step16'] / r['matmul16']:.2f} |"
            )
        print(line)
    if args.compile:
        print("\n".join(compile_comparison(args)))


if __name__ == "__main__":
    main()
