"""data=stream: the LM's rows straight into batches. Its windows hold exactly the rows the cache's
shards hold (so normalisation and every statistic match the cache path), a restored position
continues with the same batches (also across passes over the corpus), DDP ranks read disjoint
text, and it trains through train.py's real config."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from saelab.data.cache_build import CacheBuilder, LMSource
from saelab.data.lm_stream import LMActivationStream, StreamDataConfig, StreamDataModule, StreamLM
from saelab.runner import build, train
from tests.conftest import compose_config

from .conftest import TINY, model_config

B, W = 64, 256  # batch and shuffle buffer (4 batches per window)


def _cfg(corpus, **kw) -> StreamDataConfig:
    base = dict(
        model=model_config(TINY),
        corpus=corpus,
        layer=1,
        batch_size=B,
        buffer_tokens=W,
        lm_batch_size=4,
        val_tokens=B,
        device="cpu",
        prefetch_batches=0,
        progress=False,
    )
    return StreamDataConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def lm(text_corpus):
    return StreamLM(_cfg(text_corpus), torch.device("cpu"))


def _take(stream: LMActivationStream, n: int) -> list[torch.Tensor]:
    it = iter(stream)
    return [next(it) for _ in range(n)]


def _sorted_rows(x: torch.Tensor) -> torch.Tensor:
    return x[torch.from_numpy(np.lexsort(x.numpy().T[::-1]))]


def _pass_rows(lm: StreamLM) -> torch.Tensor:
    """Every row of one pass over the train split, in row-stream order."""
    return torch.cat([b.acts[lm.point].float() for b in lm.rows("train")])


def test_stream_windows_hold_exactly_the_rows_of_the_cache_shards(lm, text_corpus, tmp_path):
    stream = LMActivationStream(lm, lm.cfg)
    batches = _take(stream, 8)
    windows = [torch.cat(batches[4 * w : 4 * w + 4]) for w in range(2)]
    source = LMSource(
        model=lm.cfg.model, corpus=text_corpus, device="cpu", lm_batch_size=4, progress=False
    )
    builder = CacheBuilder(source, tmp_path)
    spec = source.spec("train", "resid", 1, n_tokens=2 * W, shard_tokens=W, context_length=32)
    (cache,) = builder.ensure([spec])
    in_order = _pass_rows(lm)
    for w, window in enumerate(windows):  # the same rows, bit for bit, in another order
        shard = cache.read(w * W, (w + 1) * W)
        assert torch.equal(_sorted_rows(window), _sorted_rows(shard))
        assert not torch.equal(window, in_order[w * W : (w + 1) * W])  # shuffled
    # Normalisation reads the same first rows as the cache path: the same scale.
    x = StreamDataModule(lm.cfg, lm).sample_activations(2 * W).double()
    assert x.pow(2).sum(-1).mean().item() == pytest.approx(cache.mean_squared_norm, rel=1e-6)


def test_a_window_mixes_many_contexts_and_every_row_comes_once_per_pass(lm):
    rows = _pass_rows(lm)
    per_pass = len(rows) // W * (W // B) + len(rows) % W // B
    stream = LMActivationStream(lm, lm.cfg)
    batches = _take(stream, per_pass + 2)
    one_pass = torch.cat(batches[:per_pass])
    kept = len(rows) // W * W + (len(rows) % W) // B * B
    assert len(one_pass) == kept  # the last window's leftover < one batch is dropped
    whole = _sorted_rows(rows[: len(rows) // W * W])
    got = _sorted_rows(torch.cat(batches[: len(rows) // W * (W // B)]))
    assert torch.equal(got, whole)
    # The first batch draws from all over its window, not from one or two contexts.
    first = batches[0]
    positions = [int((rows[:W] == r).all(-1).nonzero()[0]) // 31 for r in first]  # 31 rows/ctx
    assert len(set(positions)) >= 6
    # The second pass reads the same rows, shuffled anew.
    second = torch.cat(batches[per_pass : per_pass + 2])
    assert not torch.equal(second, torch.cat(batches[:2]))
    assert set(map(tuple, second.tolist())) <= set(map(tuple, rows[:W].tolist()))


@pytest.mark.parametrize("consumed", [0, 3, 4, 7, "next pass"])
def test_a_restored_position_continues_with_the_same_batches(lm, consumed):
    rows = len(_pass_rows(lm))
    per_pass = rows // W * (W // B) + rows % W // B
    n = per_pass + 1 if consumed == "next pass" else consumed
    reference = _take(LMActivationStream(lm, lm.cfg), n + 3)
    ran = LMActivationStream(lm, lm.cfg)
    _take(ran, n)
    state = ran.state_dict()
    assert state["offset"] == n
    resumed = LMActivationStream(lm, lm.cfg)
    resumed.load_state_dict(state)
    for got, expected in zip(_take(resumed, 3), reference[n:]):
        assert torch.equal(got, expected)


def test_ddp_ranks_read_disjoint_text_that_together_is_the_corpus(lm):
    rows = _pass_rows(lm)
    ranks = []
    for rank in (0, 1):
        stream = LMActivationStream(lm, lm.cfg, rank=rank, world_size=2)
        ranks.append(torch.cat(_take(stream, 3)))
    a, b = (set(map(tuple, r.tolist())) for r in ranks)
    assert not a & b, "two ranks trained on the same token"
    assert a | b <= set(map(tuple, rows.tolist()))
    with pytest.raises(ValueError, match="world_size=2 but this run has world_size=1"):
        LMActivationStream(lm, lm.cfg).load_state_dict(
            LMActivationStream(lm, lm.cfg, rank=0, world_size=2).state_dict()
        )


def test_buffer_must_hold_whole_batches(text_corpus):
    with pytest.raises(ValueError, match=r"data.buffer_tokens=100 is invalid: .*multiple of"):
        _cfg(text_corpus, buffer_tokens=100)


# --- through train.py's config ---------------------------------------------------------------
STREAM = [
    "data=stream",
    "layer=1",
    "data.context_length=64",
    "data.val_tokens=1024",
    "data.batch_size=256",
    "data.buffer_tokens=1024",
    "data.device=cpu",
    "data.progress=false",
    "sae.expansion_factor=4",
    "sae.normalization_tokens=2048",
    "trainer=debug",
    "logger=none",
]


def test_stream_config_composes_with_the_models_width(tmp_path, llama_dir):
    data, module = build(compose_config(STREAM, tmp_path))
    assert data.cfg.d_in == module.sae.d_in == 128 and data.cfg.buffer_tokens == 1024
    data, module = build(
        compose_config([*STREAM, f"model.name_or_path={llama_dir}", "site=attn"], tmp_path)
    )
    assert data.cfg.d_in == module.sae.d_in == 32


@pytest.mark.slow
def test_a_streamed_transcoder_trains_on_pairs_and_evaluates_in_place_of_the_mlp(
    tmp_path, llama_dir
):
    overrides = [*STREAM, f"model.name_or_path={llama_dir}", "site=transcoder", "eval_tokens=128"]
    data, module = build(compose_config(overrides, tmp_path / "built"))
    assert data.cfg.d_in == 64 and module.sae.d_in == 32 and module.sae.transcoder
    metrics = train(compose_config(overrides, tmp_path / "run"))
    assert metrics["steps"] == 20 and metrics["target_scale"] > 0
    assert np.isfinite(metrics["eval/delta_lm_loss"]) and 0 < metrics["eval/fvu"] < 5


@pytest.mark.slow
def test_stream_trains_and_evaluates_through_the_real_config(tmp_path):
    metrics = train(compose_config([*STREAM, "eval_tokens=128"], tmp_path))
    assert metrics["steps"] == 20 and 0 < metrics["val/fvu"] < 2
    assert np.isfinite(metrics["eval/delta_lm_loss"])
    assert (tmp_path / "sae" / "cfg.json").is_file()


def test_a_closed_stream_starts_no_forward(text_corpus):
    """After fit the stream's LM is closed: a filler thread still alive must not be inside a
    forward when the interpreter exits (that aborts the process), so none may start."""
    from saelab.data.lm_stream import StreamClosed

    lm = StreamLM(_cfg(text_corpus), torch.device("cpu"))
    assert next(lm.rows("train")).acts is not None
    lm.close()
    with pytest.raises(StreamClosed):
        next(lm.rows("train"))


class _Forwarded:
    """Counts the token positions the LM is run over (a hook on the real model)."""

    def __init__(self, lm: StreamLM):
        self.tokens = 0
        self.handle = lm.model.register_forward_pre_hook(self.count, with_kwargs=True)

    def count(self, module, args, kwargs) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.tokens += ids.numel()


@pytest.mark.parametrize("prefix_rows", [W // 2, W, W + B])
def test_a_stream_trains_on_the_normalisation_rows_without_running_the_lm_again(lm, prefix_rows):
    """The estimate's rows (the first of the train split) start the stream: the same batches,
    bit for bit, as a stream that runs the LM over them, for fewer forwarded tokens."""
    counter = _Forwarded(lm)
    try:
        reference = _take(LMActivationStream(lm, lm.cfg), 6)
        plain = counter.tokens
        prefix = StreamDataModule(lm.cfg, lm).sample_activations(prefix_rows)
        counter.tokens = 0
        reused = _take(LMActivationStream(lm, lm.cfg, prefix=prefix), 6)
    finally:
        counter.handle.remove()
    for got, expected in zip(reused, reference):
        assert torch.equal(got, expected)
    assert counter.tokens < plain  # the prefix's LM batches were not run again


def test_the_stream_scale_is_estimated_on_the_first_window_and_trained_on(lm):
    """sae.normalization_tokens far beyond the run: the estimate reads one shuffle window, and
    the run's first batches come from those rows, with no forward between the two."""
    module = StreamDataModule(lm.cfg, lm)
    counter = _Forwarded(lm)
    try:
        scale = module.mean_squared_norm(1_000_000)
        estimated = counter.tokens
        batches = iter(module.train_dataloader())
        first = [next(batches)]
        assert counter.tokens == estimated  # the first step's batch cost no forward
        first += [next(batches) for _ in range(W // B - 1)]  # the rest of the first window
    finally:
        counter.handle.remove()
    rows = _pass_rows(lm)[:W]
    assert scale == pytest.approx(rows.double().pow(2).sum(-1).mean().item(), rel=1e-6)
    assert torch.equal(_sorted_rows(torch.cat(first)), _sorted_rows(rows))
