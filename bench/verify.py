"""What checking the activation cache costs, next to what training does with the same bytes.
Prints a table.

    OMP_NUM_THREADS=1 python bench/verify.py           # ~2 min on one CPU core (main job's cache)

The checks (saelab/data/cache.py): on the first open (``verify_checksums=first``) or every open
(``always``) a full pass (blake2b of every byte, against the manifest, plus a CRC-32 per 1 MiB
chunk); then, with ``first`` or ``always``, the CRC-32 of every chunk the first time a process
reads it, and for every batch a NaN/inf check (one sum).

1. Per batch of the main job (4,096 x 128 float32 = 2 MiB), in interleaved rounds (best of
   each): the loader's read with the checks off; the first read of the chunks (CRC-32 + NaN
   check); later reads (NaN check only).
2. The full check, GB/s.
3. The main job's Lightning training step (the default config: JumpReLU, d_in 128, d_sae 1024,
   batch 4,096), median step time in ``Trainer.fit``, checks on vs off, interleaved. Its first
   epoch is where every batch pays the CRC.
The main job's cache (built if missing, ~2.5 min) is the one ``python train.py`` uses.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import lightning.pytorch as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from saelab.config import register_configs
from saelab.data.batches import ActivationLoader
from saelab.data.cache import ActivationCache
from saelab.runner import build

CONF = Path(__file__).resolve().parents[1] / "conf"


def compose_config(overrides: list[str], output_dir: str):
    """train.py's config with these overrides (Hydra's compose API)."""
    from hydra import compose, initialize_config_dir

    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=[*overrides, f"output_dir={output_dir}"])


@contextmanager
def checks_off():
    """The loader as before the read-time checks: plain memory-map slices, no NaN check."""
    rows_of, check_finite = ActivationCache.rows_of, ActivationCache.check_finite
    ActivationCache.rows_of = lambda self, i, lo, hi: self.shard(i)[lo:hi]
    ActivationCache.check_finite = lambda self, out, pieces: None
    try:
        yield
    finally:
        ActivationCache.rows_of, ActivationCache.check_finite = rows_of, check_finite


def epoch_ms(cache: ActivationCache, batch: int) -> float:
    """Milliseconds per batch over one epoch of the loader (no prefetch thread: its own cost)."""
    loader = ActivationLoader(cache, batch, 512, seed=0, prefetch=0)
    start, n = time.perf_counter(), 0
    for _ in loader:
        n += 1
    return (time.perf_counter() - start) / n * 1e3


class StepTimes(pl.Callback):
    def __init__(self):
        self.ends: list[float] = []

    def on_train_batch_end(self, *args) -> None:
        self.ends.append(time.perf_counter())


def step_ms(cache_dir: str, steps: int, off: bool) -> float:
    cfg = compose_config(
        [
            f"trainer.max_steps={steps}",
            "logger=none",
            "trainer.val_check_interval=100000",
            f"data.cache_dir={cache_dir}",
        ],
        tempfile.mkdtemp(),
    )
    pl.seed_everything(0, verbose=False)
    datamodule, module = build(cfg)
    timer = StepTimes()
    trainer = pl.Trainer(
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[timer],
    )
    if off:
        with checks_off():
            trainer.fit(module, datamodule=datamodule)
    else:
        trainer.fit(module, datamodule=datamodule)
    gaps = [b - a for a, b in zip(timer.ends[5:], timer.ends[6:])]
    return statistics.median(gaps) * 1e3


def main() -> None:
    torch.set_num_threads(1)
    cache_dir = str(Path("~/.cache/saelab/activations").expanduser())
    datamodule, _ = build(compose_config([f"data.cache_dir={cache_dir}"], tempfile.mkdtemp()))
    datamodule.prepare_data()  # builds the main job's cache if it is missing
    folder, batch = datamodule.train_cache.folder, datamodule.cfg.batch_size
    size_gb = sum(e["bytes"] for e in datamodule.train_cache.manifest["shards"]) / 1e9

    full, off, first, later = [], [], [], []
    for _ in range(3):
        start = time.perf_counter()
        ActivationCache(folder, verify="always")
        full.append(size_gb / (time.perf_counter() - start))
        with checks_off():
            off.append(epoch_ms(ActivationCache(folder, verify="never"), batch))
        cache = ActivationCache(folder, verify="first")  # its record exists: no full pass
        first.append(epoch_ms(cache, batch))
        later.append(epoch_ms(cache, batch))  # the same process: chunks already checked
    steps_on, steps_off = [], []
    for _ in range(3):
        steps_off.append(step_ms(cache_dir, 40, off=True))
        steps_on.append(step_ms(cache_dir, 40, off=False))

    step = min(steps_off)
    crc_ms, nan_ms = min(first) - min(off), min(later) - min(off)
    print(f"torch threads: {torch.get_num_threads()}; cache {folder.name}: {size_gb:.3f} GB")
    print()
    print("| measurement | ms per batch | / training step |")
    print("|---|---|---|")
    print(f"| loader read, checks off | {min(off):.2f} | {min(off) / step:.4f} |")
    print(
        f"| loader read, first read (CRC-32 + NaN check) | {min(first):.2f} | {min(first) / step:.4f} |"
    )
    print(f"| loader read, later reads (NaN check) | {min(later):.2f} | {min(later) / step:.4f} |")
    print(
        f"| added: CRC-32 of a batch's chunks (first read only) | {crc_ms:.2f} | {crc_ms / step:.4f} |"
    )
    print(f"| added: NaN check (every batch) | {nan_ms:.2f} | {nan_ms / step:.4f} |")
    print(f"| training step in Trainer.fit, checks off (median) | {step:.1f} | 1 |")
    print(
        f"| training step in Trainer.fit, checks on, first epoch (median) | {min(steps_on):.1f} | "
        f"{min(steps_on) / step:.3f} |"
    )
    print()
    print(f"full check (blake2b + CRC-32s, first open / always): {max(full):.2f} GB/s")
    epoch = len(ActivationLoader(ActivationCache(folder, verify="never"), batch))
    run_steps = 2000
    added = epoch * crc_ms + run_steps * nan_ms
    print(
        f"main job ({run_steps} steps, {epoch} batches per epoch): the read checks add "
        f"{added / 1e3:.2f} s to {run_steps * step / 1e3:.0f} s of steps "
        f"({added / (run_steps * step):.2%}, done in the loader's prefetch thread); the full check "
        f"at first open {size_gb / max(full):.2f} s"
    )


if __name__ == "__main__":
    main()
