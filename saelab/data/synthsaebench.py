"""SynthSAEBench (Chanin and Garriga-Alonso 2026): synthetic activations with known features,
built by SAELens's own code (``sae_lens.synthetic``) from the published configuration, so SAEs
trained here are scored on the same problem as the field's (docs/synthsaebench.md).

The benchmark model (feature directions, firing probabilities, hierarchy, correlations) is built
once per configuration and kept in saelab's cache: its orthogonalisation is the slow part on a CPU
(docs/synthsaebench.md has the times). Training samples are
generated alongside training: global batch g of a split is ``model.sample(batch_size)`` under a
seed that is a pure function of (seed, split, g), so any rank, any resumed run and any order of
reads sees the same tokens. ``data.stored_batches`` draws the first batches once into the cache
for runs that share them (saelab/data/synthsaebench_draws.py).

Needs the ``synth`` extra (``pip install -e ".[synth]"``), which brings sae-lens.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from saelab.data.base import ActivationSource
from saelab.data.cache import cache_root
from saelab.data.stream import BatchStream
from saelab.data.synthetic import _batch_seed
from saelab.fileio import file_digest, write_json

log = logging.getLogger(__name__)
MANIFEST = "saelab_synthsaebench.json"
EXTRA_HINT = 'data=synthsaebench needs sae-lens: pip install -e ".[synth]"'


def _sae_lens_synthetic():
    try:
        import sae_lens.synthetic as synthetic
    except ImportError as error:
        raise ImportError(f"{EXTRA_HINT} ({error})") from None
    return synthetic


@dataclass
class SynthSAEBenchDataConfig:
    """SynthSAEBench-16k's configuration by default (SAELens docs, ``synth_sae_bench.md``); every
    key can be changed for an ablation (e.g. ``data.hidden_dim=256``), which builds and caches a
    model of its own."""

    d_in: int = 768
    """Must equal hidden_dim (the yaml sets ``d_in: ${.hidden_dim}``)."""
    hidden_dim: int = 768
    num_features: int = 16_384
    firing_exponent: float = 0.5
    """Zipfian firing probabilities from firing_max_prob down to firing_min_prob."""
    firing_max_prob: float = 0.4
    firing_min_prob: float = 5e-4
    hierarchy_root_nodes: int = 128
    """0: no hierarchy."""
    hierarchy_branching: int = 4
    hierarchy_max_depth: int = 3
    mutually_exclusive_portion: float = 1.0
    """Fraction of parents whose children are mutually exclusive."""
    compensate_probabilities: bool = True
    scale_children_by_parent: bool = True
    orthogonalization_steps: int = 100
    """0: the random directions as drawn."""
    orthogonalization_lr: float = 3e-4
    correlation_rank: int = 25
    """0: features fire independently (apart from the hierarchy)."""
    correlation_scale: float = 0.1
    magnitude_mean_start: float = 5.0
    """Mean firing magnitude, linear from the most to the least frequent feature."""
    magnitude_mean_end: float = 4.0
    magnitude_std_mean: float = 0.5
    """Per-feature std of the magnitude, drawn from |N(magnitude_std_mean, magnitude_std_std)|."""
    magnitude_std_std: float = 0.5
    bias: float = 0.5
    """Norm of the model's bias vector (added to every sample)."""
    model_seed: int = 42
    """Seed of the benchmark model itself; ``seed`` is the seed of the samples."""
    batch_size: int = 1024
    train_tokens: int = 1_000_000_000_000
    """Size of the (virtual) training split; training length is set by trainer.max_steps."""
    val_tokens: int = 16_384
    seed: int = 0
    cache_dir: str | None = None
    """Cache root; None = $SAELAB_CACHE_DIR or ~/.cache/saelab/activations (the model goes in
    its ``synthsaebench/`` folder)."""
    prefetch_batches: int = 0
    """Batches generated ahead in a background thread (0: in the training loop)."""
    stored_batches: int = 0
    """The first N training batches are drawn once into the cache and read back bit for bit by
    every later run (saelab/data/synthsaebench_draws.py): several SAEs trained on the same
    samples pay for drawing them once. 0: every batch is drawn when it is read."""
    device: str = "cpu"
    """Where the model is built and samples are drawn: "cpu", or "cuda" (the current CUDA
    device; a GPU builds the 16k model in seconds and samples far faster than the CPU)."""

    def __post_init__(self) -> None:
        checks = {
            "hidden_dim": self.hidden_dim > 0,
            "d_in": self.d_in == self.hidden_dim,
            "num_features": self.num_features > 0,
            "firing_exponent": self.firing_exponent >= 0,
            "firing_max_prob": 0 < self.firing_max_prob <= 1,
            "firing_min_prob": 0 < self.firing_min_prob <= self.firing_max_prob,
            "hierarchy_root_nodes": self.hierarchy_root_nodes >= 0,
            "hierarchy_branching": self.hierarchy_branching >= 2,
            "hierarchy_max_depth": self.hierarchy_max_depth >= 1,
            "mutually_exclusive_portion": 0 <= self.mutually_exclusive_portion <= 1,
            "orthogonalization_steps": self.orthogonalization_steps >= 0,
            "correlation_rank": self.correlation_rank >= 0,
            "magnitude_mean_start": self.magnitude_mean_start > 0,
            "magnitude_mean_end": self.magnitude_mean_end > 0,
            "magnitude_std_std": self.magnitude_std_std >= 0,
            "bias": self.bias >= 0,
            "batch_size": self.batch_size > 0,
            "train_tokens": self.train_tokens >= self.batch_size,
            "val_tokens": self.val_tokens >= 0,
            "prefetch_batches": self.prefetch_batches >= 0,
            "stored_batches": self.stored_batches >= 0,
            "device": self.device in ("cpu", "cuda"),
        }
        for key, ok in checks.items():
            if not ok:
                raise ValueError(
                    f"data.{key}={getattr(self, key)!r} is invalid (see SynthSAEBenchDataConfig: "
                    "sizes positive, d_in equal to hidden_dim, 0 < firing_min_prob <= "
                    "firing_max_prob <= 1, hierarchy_branching >= 2, portions in [0, 1], "
                    "train_tokens >= batch_size, device cpu or cuda)."
                )

    def model_config(self):
        """The ``sae_lens.synthetic.SyntheticModelConfig`` these keys describe."""
        s = _sae_lens_synthetic()
        hierarchy = None
        if self.hierarchy_root_nodes > 0:
            hierarchy = s.HierarchyConfig(
                total_root_nodes=self.hierarchy_root_nodes,
                branching_factor=self.hierarchy_branching,
                max_depth=self.hierarchy_max_depth,
                mutually_exclusive_portion=self.mutually_exclusive_portion,
                mutually_exclusive_min_depth=0,
                compensate_probabilities=self.compensate_probabilities,
                scale_children_by_parent=self.scale_children_by_parent,
            )
        return s.SyntheticModelConfig(
            num_features=self.num_features,
            hidden_dim=self.hidden_dim,
            firing_probability=s.ZipfianFiringProbabilityConfig(
                exponent=self.firing_exponent,
                max_prob=self.firing_max_prob,
                min_prob=self.firing_min_prob,
            ),
            hierarchy=hierarchy,
            orthogonalization=(
                s.OrthogonalizationConfig(
                    num_steps=self.orthogonalization_steps, lr=self.orthogonalization_lr
                )
                if self.orthogonalization_steps > 0
                else None
            ),
            correlation=(
                s.LowRankCorrelationConfig(
                    rank=self.correlation_rank, correlation_scale=self.correlation_scale
                )
                if self.correlation_rank > 0
                else None
            ),
            mean_firing_magnitudes=s.LinearMagnitudeConfig(
                start=self.magnitude_mean_start, end=self.magnitude_mean_end
            ),
            std_firing_magnitudes=s.FoldedNormalMagnitudeConfig(
                mean=self.magnitude_std_mean, std=self.magnitude_std_std
            ),
            bias=self.bias,
            seed=self.model_seed,
        )

    def export_metadata(self) -> dict[str, Any]:
        """What an exported SAE says it reads (SAELens's cfg.json ``metadata``)."""
        key = model_key(self.model_config())
        published = key == model_key(SynthSAEBenchDataConfig().model_config())
        return {
            "model_name": "synth-sae-bench-16k" if published else f"synth-sae-bench-{key}",
            "hook_name": "synthetic",
            "hook_layer": 0,
        }

    def build(self) -> SynthSAEBenchDataModule:
        return SynthSAEBenchDataModule(self)


def model_key(model_config) -> str:
    """The cache key of a benchmark model: a digest of SAELens's own description of it."""
    text = json.dumps(model_config.to_dict(), sort_keys=True)
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def model_folder(cfg: SynthSAEBenchDataConfig) -> Path:
    return cache_root(cfg.cache_dir) / "synthsaebench" / model_key(cfg.model_config())


def load_or_build(cfg: SynthSAEBenchDataConfig):
    """The benchmark model, from saelab's cache if it holds a complete, intact copy, else built
    with SAELens's code and stored there (atomically: a folder appears only when complete)."""
    s = _sae_lens_synthetic()
    folder = model_folder(cfg)
    if not (folder / MANIFEST).is_file():
        model_config = cfg.model_config()
        log.info(
            "Building the SynthSAEBench model %s (%d features in %d dimensions, %d "
            "orthogonalisation steps); it is cached in %s",
            folder.name,
            cfg.num_features,
            cfg.hidden_dim,
            cfg.orthogonalization_steps,
            folder,
        )
        store(s.SyntheticModel(model_config, device=cfg.device), folder)
    return load(folder, cfg.device)


def store(model, folder: Path) -> None:
    """Save ``model`` (SAELens's format) with a manifest of digests, then move it into place."""
    import sae_lens

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's 0700 would hide a shared cache from its users
    try:
        model.save(tmp)
        digests = {p.name: file_digest(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        write_json(
            tmp / MANIFEST,
            {
                "key": model_key(model.cfg),
                "files": digests,
                "sae_lens_version": sae_lens.__version__,
            },
        )
        try:
            os.rename(tmp, folder)
        except OSError:
            if not (folder / MANIFEST).is_file():  # not a concurrent builder's finished copy
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load(folder: Path, device: str = "cpu"):
    """A cached model, each file checked against the manifest before SAELens reads it."""
    s = _sae_lens_synthetic()
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        files = dict(manifest["files"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(
            f"{folder / MANIFEST} is unreadable ({error}); delete {folder} to rebuild the model"
        ) from None
    for name, digest in files.items():
        path = folder / name
        if not path.is_file() or file_digest(path) != digest:
            raise ValueError(
                f"{path} is missing or does not match its digest in {MANIFEST}: the cached "
                f"SynthSAEBench model is damaged; delete {folder} to rebuild it"
            )
    model = s.SyntheticModel.load_from_disk(folder, device=device)
    if model_key(model.cfg) != manifest.get("key") or manifest.get("key") != folder.name:
        raise ValueError(
            f"{folder} holds a model whose configuration does not match its folder name; "
            f"delete {folder} to rebuild it"
        )
    return model


class SynthSAEBenchBatches:
    """The global batches of one split: batch g is ``model.sample(batch_size)`` under a seed
    made from (seed, split, g), drawn on a forked RNG so training's own RNG is untouched."""

    def __init__(self, model, seed: int, split: str, n_tokens: int, batch_size: int):
        self.model, self.seed, self.split = model, seed, split
        self.batch_size = batch_size
        self.n_batches = max(1, n_tokens // batch_size)
        self.stored = None  # StoredDraws of the first batches, read instead of drawn

    def __len__(self) -> int:
        return self.n_batches

    def with_features(self, index: int) -> tuple[Tensor, Tensor]:
        """Batch ``index`` [batch_size, d_in] and its true feature activations
        [batch_size, num_features]."""
        if not 0 <= index < self.n_batches:
            raise IndexError(index)
        device = self.model.feature_dict.feature_vectors.device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(_batch_seed(self.seed, self.split, index))
            return self.model.sample_with_features(self.batch_size)

    def __getitem__(self, index: int) -> Tensor:
        if self.stored is not None and 0 <= index < len(self.stored):
            return self.stored[index]
        return self.with_features(index)[0].float()


class SynthSAEBenchStream(BatchStream):
    def __init__(self, batches: SynthSAEBenchBatches, **kw):
        super().__init__(batches.batch_size, **kw)
        self.batches = batches
        self.global_batches = len(batches)
        self.check_ranks(f"data.{batches.split}_tokens holds {len(batches)} batch(es)")

    def identity(self) -> dict[str, Any]:
        return {
            "seed": self.batches.seed,
            "batch_size": self.batch_size,
            "split": self.batches.split,
        }

    def reader(self, epoch: int) -> Callable[[int], Tensor]:
        return self.batches.__getitem__


class SynthSAEBenchDataModule(ActivationSource):
    def __init__(self, cfg: SynthSAEBenchDataConfig):
        super().__init__()
        self.cfg = cfg
        _sae_lens_synthetic()  # a missing extra fails when the run is built, not at step 1
        self._model = None
        self._stored = None

    def prepare_data(self) -> None:
        self.model  # noqa: B018  (built and cached once, by the first process that asks)
        self.stored_draws()  # drawn and stored once when data.stored_batches asks for it

    def stored_draws(self):
        """The stored first training batches (``data.stored_batches``), or None."""
        if self.cfg.stored_batches and self._stored is None:
            from saelab.data import synthsaebench_draws as draws

            self._stored = draws.open_or_write(
                self._drawn_split("train"),
                model_key(self.model.cfg),
                draws.store_path(
                    model_folder(self.cfg), "train", self.cfg.seed, self.cfg.batch_size
                ),
                self.cfg.stored_batches,
            )
        return self._stored

    @property
    def model(self):
        """SAELens's ``SyntheticModel``: the ground truth for evaluation (its ``feature_dict``
        and ``activation_generator``)."""
        if self._model is None:
            self._model = load_or_build(self.cfg)
        return self._model

    def _drawn_split(self, name: str) -> SynthSAEBenchBatches:
        tokens = self.cfg.train_tokens if name == "train" else self.cfg.val_tokens
        return SynthSAEBenchBatches(self.model, self.cfg.seed, name, tokens, self.cfg.batch_size)

    def split(self, name: str) -> SynthSAEBenchBatches:
        batches = self._drawn_split(name)
        if name == "train":
            batches.stored = self.stored_draws()
        return batches

    @property
    def true_features(self) -> Tensor:
        return self.model.feature_dict.feature_vectors.detach()

    def sample_activations(self, n_tokens: int) -> Tensor:
        """The first ``n_tokens`` training tokens (whole batches)."""
        train = self.split("train")
        n = min(len(train), max(1, -(-n_tokens // self.cfg.batch_size)))
        return torch.cat([train[g] for g in range(n)])

    def _stream(self, name: str, track: str) -> SynthSAEBenchStream:
        rank, world = self.rank_and_world()
        return SynthSAEBenchStream(
            self.split(name),
            rank=rank,
            world_size=world,
            prefetch=self.cfg.prefetch_batches,
            track=track,
        )

    def train_dataloader(self) -> SynthSAEBenchStream:
        return self.attach_train_stream(self._stream("train", self.train_track()))

    def val_dataloader(self) -> SynthSAEBenchStream:
        return self._stream("val", "none")
