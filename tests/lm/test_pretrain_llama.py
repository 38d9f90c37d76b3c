"""The second test-bed LM's path: Llama layout, a user corpus, the real pretraining loop."""

from __future__ import annotations

import json

import pytest

from saelab.lm import prose
from saelab.lm.load import load_model, load_tokenizer
from saelab.lm.pretrain import main
from saelab.lm.sites import layout


@pytest.mark.slow
def test_llama_pretraining_on_a_text_folder_writes_a_loadable_llama(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    words = "the quick brown fox jumps over the lazy dog while the cat sleeps".split()
    for i in range(200):  # 200 documents: a few land in the 2% validation split
        text = " ".join(words[(i + j) % len(words)] for j in range(300))
        (corpus / f"doc{i:02d}.txt").write_text(text + ".\n")
    out = tmp_path / "model"
    report = main(
        [
            *("--arch", "llama", "--corpus", str(corpus), "--out", str(out)),
            *("--tokens", "4096", "--context", "64", "--batch-size", "4", "--warmup-steps", "2"),
            *("--precision", "32-true"),
        ]
    )
    model = load_model(out)
    assert model.config.model_type == "llama" and layout(model) == "llama"
    assert model.config.num_hidden_layers == 8 and model.config.hidden_size == 256
    assert load_tokenizer(out)("fox").input_ids[0] == model.config.bos_token_id
    saved = json.loads((out / "pretrain_report.json").read_text())
    assert saved["model_name"] == "tiny-llama" and saved["steps"] == 16
    # 16 steps on a 13-word language already beat the unigram baseline.
    assert report["heldout_loss"] < report["unigram_heldout_loss"]


def test_english_prose_corpus_reads_the_debian_packages(tmp_path):
    try:
        sizes = prose.build(tmp_path)
    except prose.MissingSource as e:
        pytest.skip(f"English prose packages absent ({e})")
    assert sizes["kjv.jsonl"] > 4_000_000 and sizes["debian-handbook.jsonl"] > 500_000
    first = json.loads((tmp_path / "kjv.jsonl").read_text().splitlines()[0])["text"]
    assert first.startswith("In the beginning God created the heaven and the earth.")
    assert "Ge1:1" not in first  # verse references are dropped
    handbook = (tmp_path / "debian-handbook.jsonl").read_text()
    assert "<p>" not in handbook and "apt" in handbook


def test_missing_bible_program_names_the_package(tmp_path):
    with pytest.raises(prose.MissingSource, match="apt-get install bible-kjv"):
        prose.kjv_chapters(bible=str(tmp_path / "no-such-program"))
