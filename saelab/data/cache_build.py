"""Build activation caches: one LM pass over a corpus split -> shuffled shards -> manifest.

    the row stream (saelab/lm/rows.py: documents --tokenize, pack--> LM batches --forward to
    the deepest hooked layer--> captured sites, BOS/EOS/pad dropped)
    --shard-sized shuffle buffer--> shard_NNNNN.npy

Resumable: each finished shard is followed by a small ``shard_NNNNN.json`` (rows, size,
checksum, sum of squared norms); a rerun keeps the shards whose json exists and whose bytes
verify, and restarts the pass at the first missing row. The pass is deterministic (fixed LM
batches, a shuffle seeded per shard), and which rows a batch contributes is known from the
token ids alone, so batches before the restart row are skipped WITHOUT running the LM and the
resumed cache is byte-identical to an uninterrupted one (same machine, same thread count).
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from saelab.console import is_terminal, start_timing
from saelab.data import shards
from saelab.data.cache import MANIFEST, ActivationCache, CacheSpec, folder_lock, read_manifest
from saelab.fileio import write_json
from saelab.lm import corpus as corpus_lib
from saelab.lm.config import ModelConfig
from saelab.lm.contexts import special_ids
from saelab.lm.fingerprint import weights_fingerprint
from saelab.lm.load import lm_device, load_lm
from saelab.lm.rows import iter_rows
from saelab.lm.sites import SitePoint, check_points, describe, layout, site_width

BUILD = "build.json"
log = logging.getLogger(__name__)
_FINGERPRINTS: dict[str, str] = {}


def _memo(key: str, compute) -> str:
    if key not in _FINGERPRINTS:
        _FINGERPRINTS[key] = compute()
    return _FINGERPRINTS[key]


@dataclass
class LMSource:
    """What to run to build caches: the model, the corpus and how to batch the LM."""

    model: ModelConfig = field(default_factory=ModelConfig)
    corpus: corpus_lib.CorpusConfig = field(default_factory=corpus_lib.CorpusConfig)
    device: str = "auto"
    lm_batch_size: int = 8
    progress: bool = True

    def spec(
        self,
        split: str,
        site: str,
        layer: int,
        n_tokens: int,
        dtype: str = "float32",
        context_length: int | None = None,
        shard_tokens: int = 262_144,
        shuffle_seed: int = 0,
    ) -> CacheSpec:
        """The key of a cache of this source (hashes the weights and corpus, memoised)."""
        m = self.model
        weights = _memo(
            f"w:{m.name_or_path}@{m.revision}",
            lambda: weights_fingerprint(m.name_or_path, m.revision),
        )
        corpus = _memo(f"c:{self.corpus!r}", lambda: corpus_lib.fingerprint(self.corpus))
        return CacheSpec(
            model=m.name_or_path,
            revision=m.revision,
            weights=weights,
            model_dtype=m.dtype,
            corpus=corpus,
            split=split,
            context_length=context_length or m.context_length,
            prepend_bos=m.prepend_bos,
            site=site,
            layer=layer,
            dtype=dtype,
            n_tokens=n_tokens,
            shard_tokens=shard_tokens,
            shuffle_seed=shuffle_seed,
        )


class _ShardWriter:
    """Fills a shard-sized buffer (the shuffle buffer) and writes it, permuted, when full."""

    def __init__(self, folder: Path, spec: CacheSpec, d_in: int, done: list[dict]):
        self.folder, self.spec, self.entries = folder, spec, list(done)
        self.start_row = sum(e["rows"] for e in done)  # rows before this are already on disk
        self.buffer = np.empty((spec.shard_tokens, d_in), dtype=shards.STORAGE_DTYPES[spec.dtype])
        self.fill, self.sum_sq = 0, 0.0

    def feed(self, row0: int, rows: torch.Tensor) -> None:
        """Rows number ``row0 ..`` of the pass's row stream (rows before start_row skipped)."""
        rows = rows[max(0, self.start_row - row0) :]
        while len(rows):
            take = min(len(rows), len(self.buffer) - self.fill)
            stored = shards.encode(rows[:take], self.spec.dtype)
            # Statistics of the STORED values (what training will read), in float64.
            self.sum_sq += float(shards.decode(stored, self.spec.dtype).double().pow(2).sum())
            self.buffer[self.fill : self.fill + take] = stored
            self.fill, rows = self.fill + take, rows[take:]
            if self.fill == len(self.buffer):
                self.flush()

    def flush(self) -> None:
        if self.fill == 0:
            return
        index = len(self.entries)
        perm = np.random.default_rng([self.spec.shuffle_seed, index]).permutation(self.fill)
        entry = shards.write_array(
            self.folder / f"shard_{index:05d}.npy", self.buffer[: self.fill][perm]
        )
        entry["sum_sq_norm"] = self.sum_sq
        write_json(self.folder / f"shard_{index:05d}.json", entry)  # the shard's commit
        self.entries.append(entry)
        self.fill, self.sum_sq = 0, 0.0


def _read_json(path: Path) -> dict | None:
    """A build record (shard sidecar, build.json), or None when it is unreadable or not a
    record: such a file was damaged after it was written atomically, and is rebuilt."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or (path.name.startswith("shard_") and not _is_entry(data)):
        return None
    return data


def _is_entry(data: dict) -> bool:
    return (
        isinstance(data.get("file"), str)
        and isinstance(data.get("rows"), int)
        and isinstance(data.get("bytes"), int)
        and isinstance(data.get("blake2b"), str)
        and isinstance(data.get("sum_sq_norm"), (int, float))
    )


def _completed(folder: Path, spec: CacheSpec, d_in: int) -> list[dict]:
    """Verified shards from an interrupted build; removes temp files and anything after them."""
    for tmp in folder.glob("*.tmp"):
        tmp.unlink()
    done: list[dict] = []
    while (sidecar := folder / f"shard_{len(done):05d}.json").is_file():
        entry = _read_json(sidecar)
        # Written atomically, so an unreadable record was damaged later: redo it from there
        # (the pass is deterministic, so the shards come out byte-identical).
        if entry is None or entry["file"] != sidecar.with_suffix(".npy").name:
            log.warning(
                "discarding %s and the shards after it from an interrupted build: %s is not a "
                "valid shard record; they are recomputed",
                sidecar.with_suffix(".npy").name,
                sidecar,
            )
            break
        problem = shards.problem(folder / entry["file"], entry, d_in, spec.dtype, checksum=True)
        if problem:
            log.warning("discarding %s from an interrupted build: %s", entry["file"], problem)
            break
        done.append(entry)
        if entry["rows"] < spec.shard_tokens:  # a short shard is the last one
            break
    for path in folder.glob("shard_*"):
        if int(path.name[6:11]) >= len(done):
            path.unlink()
    return done


class CacheBuilder:
    """Opens caches, building (or finishing) the missing ones; the LM is loaded only if needed."""

    def __init__(self, source: LMSource, root: Path, verify: str = "first", lm=None):
        """``lm``: an already loaded (model, tokenizer) of ``source.model``, to build with it
        instead of loading another copy."""
        self.source, self.root, self.verify = source, Path(root), verify
        self._lm = lm
        self._seconds = 0.0  # duration of the last LM pass, for the manifest

    def folder(self, spec: CacheSpec) -> Path:
        return self.root / spec.folder_name()

    def ensure(
        self, specs: list[CacheSpec], expected_d_in: int | None = None
    ) -> list[ActivationCache]:
        """One cache per spec; all missing ones are built in ONE LM pass (they must share the
        row stream: model, corpus, split, context, token budget)."""
        missing = [s for s in specs if read_manifest(self.folder(s)) is None]
        if missing:
            with ExitStack() as stack:
                for folder in sorted({self.folder(s) for s in missing}):
                    stack.enter_context(folder_lock(folder))
                # Another process may have finished them while we waited for the lock.
                missing = [s for s in missing if read_manifest(self.folder(s)) is None]
                if missing:
                    self._build(missing, expected_d_in)
        return [ActivationCache(self.folder(s), s, self.verify) for s in specs]

    def lm(self):
        """(model, tokenizer), loaded on first use."""
        if self._lm is None:
            self._lm = load_lm(self.source.model, lm_device(self.source.device))
        return self._lm

    def _build(self, specs: list[CacheSpec], expected_d_in: int | None) -> None:
        shared = {
            (
                s.model,
                s.weights,
                s.model_dtype,
                s.corpus,
                s.split,
                s.context_length,
                s.prepend_bos,
                s.n_tokens,
            )
            for s in specs
        }
        if len(shared) != 1:
            raise ValueError(
                "caches built in one pass must share model, corpus, split, context and budget"
            )
        spec0 = specs[0]
        model, tokenizer = self.lm()
        points = check_points(model, [SitePoint(s.site, s.layer) for s in specs])
        writers = []
        for spec in specs:
            d_in = site_width(model, spec.site)
            if expected_d_in is not None and d_in != expected_d_in:
                raise ValueError(
                    f"data.d_in={expected_d_in} but the {spec.site} site of {spec.model} is {d_in} "
                    "wide: drop the data.d_in override (it is read from the model's config)"
                )
            folder = self.folder(spec)
            build = {
                "key": spec.key(),
                "spec": spec.key_fields(),
                "d_in": d_in,
                "lm_batch_size": self.source.lm_batch_size,
            }
            previous = _read_json(folder / BUILD) if (folder / BUILD).is_file() else None
            if previous is None and (folder / BUILD).is_file():
                log.warning(
                    "%s is not a valid build record: building this cache over", folder / BUILD
                )
            if previous != build:  # first attempt, or another batching: start this cache over
                for path in folder.glob("shard_*"):
                    path.unlink()
                write_json(folder / BUILD, build)
            writers.append(_ShardWriter(folder, spec, d_in, _completed(folder, spec, d_in)))
        self._pass(model, tokenizer, spec0, points, writers)
        for writer, point in zip(writers, points):
            self._write_manifest(model, writer, point)

    def _pass(self, model, tokenizer, spec: CacheSpec, points, writers) -> None:
        finished = [w.entries and w.entries[-1]["rows"] < w.spec.shard_tokens for w in writers]
        start = min(
            (w.start_row for w, f in zip(writers, finished) if not f), default=spec.n_tokens
        )
        bar = self._bar(spec, points, start)
        row, t0, timed = 0, time.perf_counter(), False
        rows = iter_rows(
            model,
            tokenizer,
            corpus_lib.iter_documents(self.source.corpus, spec.split),
            points,
            context_length=spec.context_length,
            lm_batch_size=self.source.lm_batch_size,
            prepend_bos=spec.prepend_bos,
            start_row=start,
            stop_row=spec.n_tokens,
        )
        for batch in rows if start < spec.n_tokens else ():
            row = batch.row0 + batch.n
            if batch.acts is None:  # already on disk for every cache: no LM work was done
                continue
            for point, writer in zip(points, writers):
                acts = batch.acts[point].float().cpu()
                _check_finite(
                    acts,
                    point,
                    spec,
                    batch.index,
                    self.source.lm_batch_size,
                    self.folder(writer.spec),
                )
                writer.feed(batch.row0, acts)
            if timed:
                bar.update(row - max(batch.row0, start))
            else:  # the first batch carries the start-up: its rows count, its time does not
                start_timing(bar, row - max(batch.row0, start))
                timed = True
        bar.close()
        self._seconds = time.perf_counter() - t0
        if row < spec.n_tokens and start < spec.n_tokens:
            warnings.warn(
                f"the {spec.split} split of the corpus has only {row:,} usable tokens at context "
                f"{spec.context_length}; the cache holds {row:,} instead of the {spec.n_tokens:,} "
                "requested (lower the token budget to silence this, or use a larger corpus)",
                stacklevel=2,
            )
        for writer in writers:
            writer.flush()

    def _bar(self, spec: CacheSpec, points, start: int) -> tqdm:
        """A bar on a terminal; off one (a log file) a plain line, as a bar there is a carriage
        return per refresh."""
        desc = f"caching {', '.join(f'{p.site}@{p.layer}' for p in points)} ({spec.split})"
        show = self.source.progress and is_terminal()
        if self.source.progress and not show and start < spec.n_tokens:
            resumed = f", resuming at {start:,}" if start else ""
            print(f"{desc}: {spec.n_tokens:,} tokens{resumed}", flush=True)
        return tqdm(
            total=spec.n_tokens,
            initial=min(start, spec.n_tokens),
            unit="tok",
            unit_scale=True,
            desc=desc,
            disable=not show,
            mininterval=1.0,
        )

    def _write_manifest(self, model, writer: _ShardWriter, point: SitePoint) -> None:
        spec, entries = writer.spec, writer.entries
        count = sum(e["rows"] for e in entries)
        if count == 0:
            raise ValueError(
                f"no tokens were cached for {spec.folder_name()}: the {spec.split} split is empty"
            )
        manifest = {
            "format": spec.key_fields()["format"],
            "key": spec.key(),
            "spec": spec.key_fields(),
            "d_in": int(writer.buffer.shape[1]),
            "dtype": spec.dtype,
            "token_count": count,
            "requested_tokens": spec.n_tokens,
            "corpus_exhausted": count < spec.n_tokens,
            "mean_squared_norm": sum(e["sum_sq_norm"] for e in entries) / count,
            "hook": describe(model, point),
            "layout": layout(model),
            "model_type": getattr(model.config, "model_type", None),
            "dropped_token_ids": special_ids(self.lm()[1]),
            "shards": entries,
            "build": {
                "lm_batch_size": self.source.lm_batch_size,
                "last_pass_seconds": self._seconds,
                "device": str(next(model.parameters()).device),
                "versions": {"torch": torch.__version__, "numpy": np.__version__},
            },
        }
        write_json(writer.folder / MANIFEST, manifest)  # last: only now is the cache complete
        log.info("activation cache complete: %s (%d tokens)", writer.folder, count)


def _check_finite(
    acts: torch.Tensor, point: SitePoint, spec: CacheSpec, batch: int, lm_batch: int, folder: Path
) -> None:
    bad = int((~torch.isfinite(acts)).sum())
    if bad:
        raise FloatingPointError(
            f"{bad} non-finite activation values (NaN/inf) at site {point.site}, layer {point.layer}, "
            f"in LM batch {batch} (contexts {batch * lm_batch}..{(batch + 1) * lm_batch - 1}) of the "
            f"{spec.split} split of {spec.model} (model.dtype={spec.model_dtype}). The forward "
            "overflowed or the weights are broken: try model.dtype=float32, check the checkpoint. "
            f"Nothing was marked complete; shards written so far stay in {folder}."
        )
