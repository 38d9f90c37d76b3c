"""Tokenizers: the shipped one round-trips code exactly and prepends <bos> like Gemma's."""

from __future__ import annotations

import pytest

from saelab.lm.load import load_tokenizer
from saelab.lm.tokenizer import save_hf_tokenizer, train_tokenizer

SAMPLES = [
    "def f(x):\n\treturn x ** 2  # square\n",
    'class Ünïcode:\n    """Docstring with ☃, 日本語 and emoji 🐍."""\n    pass\r\n',
    "    if a != b and c >= d:  x = {'k': [1, 2.5e-3, -7]} ; y = r'\\n'\n\n\n",
    "weird   spacing\u00a0nbsp and trailing   ",
    "",
]


@pytest.fixture(scope="module")
def shipped():
    return load_tokenizer("tiny-gemma-2")


@pytest.mark.parametrize("text", SAMPLES)
def test_shipped_tokenizer_round_trips(shipped, text):
    ids = shipped(text)["input_ids"]
    assert ids[0] == shipped.bos_token_id  # BOS prepended, as Gemma's tokenizer does
    assert shipped.unk_token_id not in ids  # byte-level: nothing is unknown
    assert shipped.decode(ids, skip_special_tokens=True) == text
    assert shipped.decode(shipped(text, add_special_tokens=False)["input_ids"]) == text


def test_shipped_tokenizer_special_tokens(shipped):
    assert len(shipped) == 8192
    ids = {shipped.pad_token_id, shipped.eos_token_id, shipped.bos_token_id}
    assert len(ids) == 3 and None not in ids
    # Code should compress well: a common line is a handful of tokens, not one per byte.
    assert len(shipped("    def __init__(self):\n        return None\n")["input_ids"]) < 16


def test_trained_tokenizer_saves_in_hf_format(tmp_path):
    from transformers import AutoTokenizer

    texts = [f"def function_{i}(value):\n    return value + {i}\n" for i in range(200)]
    tok = train_tokenizer(texts, vocab_size=300)
    save_hf_tokenizer(tok, tmp_path, model_max_length=64)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert (tmp_path / name).is_file()
    hf = AutoTokenizer.from_pretrained(tmp_path)
    assert hf.convert_ids_to_tokens([0, 1, 2, 3]) == ["<pad>", "<eos>", "<bos>", "<unk>"]
    text = "def function_7(value):  # ok ☃\n"
    ids = hf(text)["input_ids"]
    assert ids[0] == hf.bos_token_id == 2
    assert hf.decode(ids, skip_special_tokens=True) == text
