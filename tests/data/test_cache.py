"""The activation cache holds exactly the hooked activations of the non-special tokens, is keyed,
verified, refused when it does not match, and shared safely between processes."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import torch

from saelab.data.cache import MANIFEST, ActivationCache, CacheError
from saelab.data.cache_build import CacheBuilder, LMSource
from saelab.lm.corpus import iter_documents
from saelab.lm.load import load_model, load_tokenizer
from saelab.lm.sites import SITES
from tests.lm.test_sites import _reference

from .conftest import TINY, model_config

CTX = 32


def _independent(model, tokenizer, corpus_cfg, site, layer, n_tokens):
    """The expected cache content, computed WITHOUT saelab's packer, mask or hooks: documents +
    <eos>, cut into <bos>-led rows, full forward with our own hook, special/pad positions
    dropped. Also returns the activations AT special positions (which must not be cached)."""
    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    stream = []
    for text in iter_documents(corpus_cfg, "train"):
        stream += tokenizer(text, add_special_tokens=False)["input_ids"] + [eos]
    rows, masks = [], []
    for i in range(0, len(stream), CTX - 1):
        body = stream[i : i + CTX - 1]
        rows.append([bos] + body + [pad] * (CTX - 1 - len(body)))
        masks.append([1] * (1 + len(body)) + [0] * (CTX - 1 - len(body)))
    kept, special = [], []
    for j in range(0, len(rows), 4):  # the same LM batches as the builder (lm_batch_size=4)
        ids, mask = torch.tensor(rows[j : j + 4]), torch.tensor(masks[j : j + 4])
        with torch.no_grad():
            acts = _reference(model, ids, mask, site, layer)
        real = (mask == 1) & (ids != bos) & (ids != eos) & (ids != pad)
        kept.append(acts[real])
        special.append(acts[(ids == bos) | (ids == eos)])
    return torch.cat(kept)[:n_tokens], torch.cat(special)


def _sorted_rows(x: torch.Tensor) -> torch.Tensor:
    order = np.lexsort(x.numpy().T[::-1])
    return x[torch.from_numpy(order)]


def _builder(root, corpus_cfg, name=TINY, **kw):
    # CPU: the independent reference runs on CPU, and exact equality needs the same device.
    source = LMSource(
        model=model_config(name, **kw),
        corpus=corpus_cfg,
        device="cpu",
        lm_batch_size=4,
        progress=False,
    )
    return CacheBuilder(source, root)


def _spec(builder, site="resid", layer=2, n_tokens=2000, **kw):
    kw.setdefault("shard_tokens", 512)
    return builder.source.spec("train", site, layer, n_tokens, **kw)


@pytest.mark.parametrize("site", SITES)
def test_cached_gemma2_activations_equal_an_independent_full_forward(
    tiny_lm, text_corpus, tmp_path, site
):
    builder = _builder(tmp_path, text_corpus)
    (cache,) = builder.ensure([_spec(builder, site, layer=2)])
    model, tok = tiny_lm
    expected, special = _independent(model, tok, text_corpus, site, 2, 2000)
    got = cache.read(0, len(cache))
    assert len(cache) == cache.manifest["token_count"] == 2000
    assert cache.manifest["shards"][0]["rows"] == 512 and len(cache.manifest["shards"]) == 4
    # Shards are shuffled: compare as sets of rows (each row is a unique float vector).
    torch.testing.assert_close(_sorted_rows(got), _sorted_rows(expected), rtol=0, atol=0)
    assert not torch.equal(got, expected)  # but really shuffled
    # No row of the cache is the activation of a <bos> or <eos> position.
    matches = (got[:, None, :] == special[None, :, :]).all(-1)
    assert not matches.any()
    stats = expected.double().pow(2).sum(-1).mean().item()
    assert cache.mean_squared_norm == pytest.approx(stats, rel=1e-6)


@pytest.mark.parametrize("site", SITES)
def test_cached_llama_activations_equal_an_independent_full_forward(
    llama_dir, text_corpus, tmp_path, site
):
    builder = _builder(tmp_path, text_corpus, llama_dir)
    (cache,) = builder.ensure([_spec(builder, site, layer=1, n_tokens=1200)])
    expected, _ = _independent(
        load_model(llama_dir), load_tokenizer(llama_dir), text_corpus, site, 1, 1200
    )
    assert cache.manifest["layout"] == "llama"
    assert cache.d_in == (64 if site == "transcoder" else 32)  # [MLP in | MLP out]
    torch.testing.assert_close(
        _sorted_rows(cache.read(0, 1200)), _sorted_rows(expected), rtol=0, atol=0
    )


@pytest.mark.slow  # a subprocess or a multi-site cache: seconds
def test_whole_corpus_with_ragged_tail_and_one_pass_for_several_sites(
    tiny_lm, text_corpus, tmp_path
):
    builder = _builder(tmp_path, text_corpus)
    specs = [_spec(builder, "mlp", 1, n_tokens=10**6), _spec(builder, "attn", 3, n_tokens=10**6)]
    with pytest.warns(UserWarning, match="has only .* usable tokens"):
        caches = builder.ensure(specs)
    model, tok = tiny_lm
    for cache, spec in zip(caches, specs):
        expected, _ = _independent(model, tok, text_corpus, spec.site, spec.layer, 10**6)
        assert cache.manifest["corpus_exhausted"] and len(cache) == len(expected)
        torch.testing.assert_close(
            _sorted_rows(cache.read(0, len(cache))), _sorted_rows(expected), rtol=0, atol=0
        )


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_storage_dtypes_round_to_the_dtype_and_read_back_as_float32(text_corpus, tmp_path, dtype):
    builder = _builder(tmp_path, text_corpus)
    (full,) = builder.ensure([_spec(builder, n_tokens=600)])
    (small,) = builder.ensure([_spec(builder, n_tokens=600, dtype=dtype)])
    assert small.folder != full.folder and small.shard(0).itemsize == 2
    got = small.read(0, 600)
    assert got.dtype == torch.float32
    torch.testing.assert_close(
        got, full.read(0, 600).to(getattr(torch, dtype)).float(), rtol=0, atol=0
    )


def test_a_second_open_reuses_and_a_changed_key_builds_a_new_cache(text_corpus, tmp_path):
    builder = _builder(tmp_path, text_corpus)
    spec = _spec(builder, n_tokens=600)
    (first,) = builder.ensure([spec])
    mtimes = {p.name: p.stat().st_mtime_ns for p in first.folder.glob("shard_*.npy")}
    fresh = _builder(tmp_path, text_corpus)
    (again,) = fresh.ensure([spec])
    assert fresh._lm is None  # reused without loading the model
    assert again.folder == first.folder
    assert mtimes == {p.name: p.stat().st_mtime_ns for p in again.folder.glob("shard_*.npy")}
    for changed in (
        dict(layer=3),
        dict(n_tokens=700),
        dict(dtype="float16"),
        dict(context_length=16),
    ):
        kw = {"n_tokens": 600, **changed}
        assert fresh.folder(_spec(fresh, **kw)) != first.folder, changed
    other_corpus = _builder(
        tmp_path, text_corpus.__class__(source=text_corpus.source, val_fraction=0.5)
    )
    assert other_corpus.folder(_spec(other_corpus, n_tokens=600)) != first.folder


def test_corrupt_or_truncated_shards_are_refused_with_the_fix(text_corpus, tmp_path):
    builder = _builder(tmp_path, text_corpus)
    spec = _spec(builder, n_tokens=1200)
    (cache,) = builder.ensure([spec])
    shard = cache.folder / "shard_00001.npy"
    data = bytearray(shard.read_bytes())
    data[-7] ^= 0xFF  # same size, one flipped byte
    shard.write_bytes(bytes(data))
    ActivationCache(cache.folder, spec, verify="first")  # already verified once: size check only
    with pytest.raises(CacheError, match=r"shard_00001\.npy.*checksum.*rm -r") as e:
        ActivationCache(cache.folder, spec, verify="always")
    assert str(cache.folder) in str(e.value)
    shard.write_bytes(bytes(data[:-100]))  # truncated: caught even without checksums
    with pytest.raises(CacheError, match=r"shard_00001\.npy.*bytes.*truncated"):
        ActivationCache(cache.folder, spec, verify="never")
    with pytest.raises(CacheError, match="corrupt"):
        builder.ensure([spec])  # never silently used


def test_first_open_verifies_checksums(text_corpus, tmp_path):
    builder = _builder(tmp_path, text_corpus)
    spec = _spec(builder, n_tokens=600)
    (cache,) = builder.ensure([spec])
    (cache.folder / "verified.json").unlink()
    shard = cache.folder / "shard_00000.npy"
    data = bytearray(shard.read_bytes())
    data[200] ^= 1
    shard.write_bytes(bytes(data))
    with pytest.raises(CacheError, match="checksum"):
        ActivationCache(cache.folder, spec)


def test_a_manifest_that_does_not_match_the_config_is_refused(text_corpus, tmp_path):
    builder = _builder(tmp_path, text_corpus)
    spec = _spec(builder, n_tokens=600)
    (cache,) = builder.ensure([spec])
    manifest = json.loads((cache.folder / MANIFEST).read_text())
    manifest["spec"]["layer"] = 7
    (cache.folder / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(
        CacheError, match=r"does not match the config \(layer: cache has 7, config wants 2\).*rm -r"
    ):
        builder.ensure([spec])
    (cache.folder / MANIFEST).write_text("{not json")
    with pytest.raises(CacheError, match="not a valid cache manifest"):
        builder.ensure([spec])


def test_two_concurrent_builders_build_once_and_share(text_corpus, tmp_path):
    a, b = _builder(tmp_path, text_corpus), _builder(tmp_path, text_corpus)
    spec = _spec(a, n_tokens=1500)
    results = {}

    def run(name, builder):
        results[name] = builder.ensure([spec])[0]

    threads = [threading.Thread(target=run, args=(n, bld)) for n, bld in (("a", a), ("b", b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results["a"].folder == results["b"].folder
    assert (a._lm is None) != (b._lm is None)  # exactly one of them ran the model
    torch.testing.assert_close(
        results["a"].read(0, 1500), results["b"].read(0, 1500), rtol=0, atol=0
    )


def test_non_finite_activations_fail_the_build_clearly(llama_dir, text_corpus, tmp_path):
    broken = tmp_path / "broken"
    model = load_model(llama_dir)
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight.fill_(float("nan"))
    model.save_pretrained(broken, safe_serialization=True)
    load_tokenizer(llama_dir).save_pretrained(broken)
    builder = _builder(tmp_path / "cache", text_corpus, broken)
    spec = _spec(builder, "resid", 1, n_tokens=600)
    with pytest.raises(
        FloatingPointError, match=r"non-finite.*site resid, layer 1.*LM batch 0.*model.dtype"
    ):
        builder.ensure([spec])
    assert not (builder.folder(spec) / MANIFEST).exists()


def test_width_mismatch_is_reported_before_the_pass(text_corpus, tmp_path):
    builder = _builder(tmp_path, text_corpus)
    with pytest.raises(
        ValueError,
        match=r"data.d_in=64 but the attn site .* is 128 wide: drop the data.d_in override",
    ):
        builder.ensure([_spec(builder, "attn", n_tokens=600)], expected_d_in=64)
