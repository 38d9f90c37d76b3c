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
