"""Attacks on the data a run reads: files named .txt that hold binary data, shards that cannot be
read (symbolic links that loop or dangle, as on an unmounted disk), malformed .jsonl lines.
Nothing is skipped silently: each is an error naming the file and the fix, on the cache and
stream paths alike."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from saelab.data.files import FilesDataConfig
from saelab.data.lm_stream import StreamLM
from saelab.lm import corpus
from tests.data.test_cache import _builder, _spec
from tests.data.test_lm_stream import _cfg


def _corpus_with(tmp_path: Path, text_corpus, name: str, data: bytes) -> corpus.CorpusConfig:
    """The small text corpus plus one more file holding ``data``."""
    folder = tmp_path / "corpus"
    shutil.copytree(text_corpus.source, folder)
    (folder / name).write_bytes(data)
    return corpus.CorpusConfig(source=str(folder), val_fraction=text_corpus.val_fraction)


NOT_TEXT = {
    "random-bytes": random.Random(0).randbytes(20_000),
    "nul-bytes": b"\0" * 20_000,
    "utf-16": ("plain English text, saved as UTF-16. " * 200).encode("utf-16-le"),
}


@pytest.mark.parametrize("kind", NOT_TEXT)
def test_a_file_that_is_not_text_is_refused_naming_it(tmp_path, text_corpus, kind):
    cfg = _corpus_with(tmp_path, text_corpus, "zz-data.txt", NOT_TEXT[kind])
    with pytest.raises(ValueError, match=r"zz-data\.txt is not UTF-8 text") as e:
        list(corpus.iter_documents(cfg, "train"))
    assert "remove it from the corpus or convert it to UTF-8" in str(e.value)


@pytest.mark.slow  # loads the real LM
def test_a_binary_file_in_the_corpus_fails_naming_it_on_the_cache_path(tmp_path, text_corpus):
    cfg = _corpus_with(tmp_path, text_corpus, "zz-data.txt", NOT_TEXT["random-bytes"])
    builder = _builder(tmp_path / "cache", cfg)
    with pytest.raises(ValueError, match=r"zz-data\.txt is not UTF-8 text"):
        builder.ensure([_spec(builder, n_tokens=1800)])


@pytest.mark.slow  # loads the real LM
def test_a_binary_file_in_the_corpus_fails_naming_it_on_the_stream_path(tmp_path, text_corpus):
    cfg = _corpus_with(tmp_path, text_corpus, "zz-data.txt", NOT_TEXT["random-bytes"])
    lm = StreamLM(_cfg(cfg), torch.device("cpu"))
    with pytest.raises(ValueError, match=r"zz-data\.txt is not UTF-8 text"):
        lm.first_rows("train", 10_000, "reading")


def test_a_stray_bad_byte_in_real_text_still_reads(tmp_path, text_corpus):
    text = Path(text_corpus.source, "doc0.txt").read_bytes()
    cfg = _corpus_with(tmp_path, text_corpus, "stray.txt", text[:500] + b"\xff\xfe" + text[500:])
    documents = list(corpus.iter_documents(cfg, "train"))
    assert any("\ufffd" in d for d in documents) and len(documents) == 7


def test_a_malformed_jsonl_line_names_the_file_and_line(tmp_path, text_corpus):
    data = b'{"text": "one"}\n{"text": "two"\n'
    cfg = _corpus_with(tmp_path, text_corpus, "rows.jsonl", data)
    with pytest.raises(ValueError, match=r"rows\.jsonl:2 is not valid JSON"):
        list(corpus.iter_documents(cfg, "train"))


# --- shards that cannot be read -----------------------------------------------------------------
def _shards(folder: Path, n: int = 3, rows: int = 512) -> Path:
    folder.mkdir()
    for i in range(n):
        np.save(folder / f"shard_{i}.npy", np.random.default_rng(i).random((rows, 8), "float32"))
    return folder


LINKS = {
    "dangling": lambda link: link.symlink_to(link.parent / "on-an-unmounted-disk" / "x.npy"),
    "loop": lambda link: link.symlink_to(link),
    "loop-of-two": lambda link: (
        link.symlink_to(link.with_name("other.npy")),
        link.with_name("other.npy").symlink_to(link),
    ),
}


@pytest.mark.parametrize("link", LINKS)
def test_a_shard_that_cannot_be_read_is_an_error_naming_it(tmp_path, link):
    folder = _shards(tmp_path / "acts")
    LINKS[link](folder / "shard_1b.npy")
    with pytest.raises((ValueError, OSError), match=r"shard_1b\.npy") as e:
        FilesDataConfig(path=str(folder), batch_size=256)
    assert "link" in str(e.value)


@pytest.mark.parametrize("link", ["dangling", "loop"])
def test_data_path_itself_a_broken_link_says_so(tmp_path, link):
    path = tmp_path / "acts.npy"
    LINKS[link](path)
    problem = "loops" if link == "loop" else "dangling"
    with pytest.raises((ValueError, OSError), match=rf"data\.path=.*acts\.npy.*{problem}"):
        FilesDataConfig(path=str(path), batch_size=256)


@pytest.mark.parametrize("link", ["dangling", "loop"])
def test_a_corpus_file_that_cannot_be_read_is_an_error_naming_it(tmp_path, text_corpus, link):
    cfg = _corpus_with(tmp_path, text_corpus, "zz-placeholder", b"")
    LINKS[link](Path(cfg.source) / "zz-book.txt")
    with pytest.raises((ValueError, OSError), match=r"zz-book\.txt.*link"):
        list(corpus.iter_documents(cfg, "train"))
