"""The corpus: deterministic, disjoint, test-free stdlib split; local files; clear errors."""

from __future__ import annotations

import json

import pytest

from saelab.lm import corpus


def test_stdlib_split_is_deterministic_disjoint_and_complete():
    train = [k for k, _ in corpus.iter_keyed_documents("python-stdlib", "train")]
    val = [k for k, _ in corpus.iter_keyed_documents("python-stdlib", "validation")]
    assert train == [k for k, _ in corpus.iter_keyed_documents("python-stdlib", "train")]
    assert val == sorted(val) and train == sorted(train)  # sorted, machine-independent order
    assert not set(train) & set(val)
    non_empty = {rel for rel, path in corpus.stdlib_files() if path.stat().st_size > 0}
    assert set(train) | set(val) == non_empty
    assert 0.005 < len(val) / (len(train) + len(val)) < 0.06  # ~2% of files
    assert "argparse.py" in train + val


def test_stdlib_excludes_tests_and_third_party():
    rels = [rel for rel, _ in corpus.stdlib_files()]
    assert len(rels) > 300
    for rel in rels:
        dirs = rel.split("/")[:-1]
        assert not {"test", "tests", "idle_test", "site-packages", "dist-packages"} & set(dirs), rel


def test_fingerprint_is_stable_and_split_sensitive():
    assert corpus.fingerprint() == corpus.fingerprint("python-stdlib")
    assert corpus.fingerprint() != corpus.fingerprint({"val_fraction": 0.05})


def test_local_txt_and_jsonl(tmp_path):
    (tmp_path / "a.txt").write_text("alpha text")
    sub = tmp_path / "sub"
    sub.mkdir()
    rows = [{"text": f"row {i}"} for i in range(200)]
    (sub / "b.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (sub / "ignored.bin").write_bytes(b"\x00\x01")
    cfg = {"source": str(tmp_path), "val_fraction": 0.1}
    train = list(corpus.iter_documents(cfg, "train"))
    val = list(corpus.iter_documents(cfg, "validation"))
    assert sorted(train + val) == sorted(["alpha text"] + [r["text"] for r in rows])
    assert 0 < len(val) < 60  # split per JSONL line, not per file

    before = corpus.fingerprint(cfg)
    (tmp_path / "a.txt").write_text("changed")
    assert corpus.fingerprint(cfg) != before


def test_bad_sources_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list(corpus.iter_documents(str(tmp_path / "missing"), "train"))
    with pytest.raises(ValueError, match="allowed"):
        list(corpus.iter_documents(None, "test"))
    with pytest.raises(ValueError, match="unknown corpus keys"):
        corpus.as_config({"sauce": "x"})
    (tmp_path / "c.jsonl").write_text(json.dumps({"body": "x"}) + "\n")
    with pytest.raises(ValueError, match="text_field"):
        list(corpus.iter_keyed_documents(str(tmp_path / "c.jsonl"), "train")) + list(
            corpus.iter_keyed_documents(str(tmp_path / "c.jsonl"), "validation")
        )


def test_hf_source_without_datasets_says_how_to_install():
    try:
        import datasets  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match=r"pip install 'saelab\[datasets\]'"):
            list(corpus.iter_documents("hf:wikitext", "train"))
    else:
        pytest.skip("datasets is installed; the missing-dependency message cannot be shown")


# --- long documents: chunks for the split ---------------------------------------------------
def _book(n_paragraphs: int, seed: int) -> str:
    import random

    rng = random.Random(seed)
    words = ["alpha", "beta", "gamma", "delta", "sigma", "omega", "kappa", "theta"]
    return "".join(
        " ".join(rng.choice(words) for _ in range(rng.randint(20, 120))) + "\n\n"
        for _ in range(n_paragraphs)
    )


def test_chunks_cut_at_paragraph_boundaries_and_join_back_exactly():
    text = _book(300, 0) + "x" * 5000 + "\n" + "y" * 10  # one paragraph longer than a chunk
    chunks = corpus.split_chunks(text, 2000)
    assert "".join(chunks) == text
    assert all(len(c) <= 2000 for c in chunks) and len(chunks) > 30
    paragraph_cuts = [c for c in chunks[:-4] if not c.endswith("\n\n")]
    assert not paragraph_cuts  # every cut before the long paragraph is at a blank line
    assert corpus.split_chunks("short", 2000) == ["short"]
    assert corpus.split_chunks(text, 0) == [text]


def test_two_long_files_get_a_validation_split_by_chunk(tmp_path):
    (tmp_path / "book1.txt").write_text(_book(1500, 1))  # ~0.6 MB each
    (tmp_path / "book2.txt").write_text(_book(1500, 2))
    cfg = {"source": str(tmp_path)}
    train = list(corpus.iter_keyed_documents(cfg, "train"))
    val = list(corpus.iter_keyed_documents(cfg, "validation"))
    assert val, "two long files must still give a validation split"
    assert all("#" in key for key, _ in train + val)
    n_chunks = sum(len(corpus.split_chunks(_book(1500, s), 16_384)) for s in (1, 2))
    val_chars = sum(len(t) for _, t in val)
    assert 0.003 < val_chars / sum(len(t) for _, t in train + val) < 0.08  # ~2% of chunks
    assert n_chunks > 50
    # Every character lands in exactly one split, in order within its document.
    for name, seed in (("book1.txt", 1), ("book2.txt", 2)):
        parts = sorted(
            ((int(k.split("#")[1]), t) for k, t in train + val if k.startswith(name)),
        )
        assert "".join(t for _, t in parts) == _book(1500, seed)
    corpus.check_split(cfg, "validation")  # passes: there is a validation chunk
    # Whole-document splitting (the old behaviour) gives none here, and says so in seconds.
    with pytest.raises(ValueError) as error:
        corpus.check_split({**cfg, "chunk_chars": 0}, "validation")
    message = str(error.value)
    for needed in (str(tmp_path), "val_fraction=0.02", "data.corpus.val_fraction", "2 document"):
        assert needed in message, needed
    assert corpus.fingerprint(cfg) != corpus.fingerprint({**cfg, "chunk_chars": 0})


def test_stdlib_is_split_by_whole_file_as_before():
    """The embedded model was pretrained on the stdlib's train files: its split (and so its
    cache keys) must not move when long documents of other corpora are chunked."""
    assert corpus.CorpusConfig().effective_chunk_chars == 0
    assert corpus.fingerprint() == corpus.fingerprint({"chunk_chars": 0})
    assert corpus.fingerprint() != corpus.fingerprint({"chunk_chars": 16_384})
    keys = [k for k, _ in corpus.iter_keyed_documents(None, "validation")]
    assert keys and not any("#" in k for k in keys)
