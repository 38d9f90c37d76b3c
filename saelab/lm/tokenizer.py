"""Train the embedded model's byte-level BPE tokenizer and save it in Hugging Face format.

Byte-level BPE is lossless on any UTF-8 text (no <unk> is ever needed for real input), which
matters for code: indentation, tabs and unicode in docstrings must round-trip exactly.
The saved folder loads with `transformers.AutoTokenizer.from_pretrained(folder)` offline and,
like Gemma's tokenizer, prepends <bos> to every encoded text.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

# Same ids as Gemma's tokenizer for the tokens both have (pad=0, eos=1, bos=2, unk=3), so code
# that hard-codes Gemma's special ids by mistake still behaves on the embedded model.
SPECIAL_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>"]
VOCAB_SIZE = 8192


def train_tokenizer(texts: Iterable[str], vocab_size: int = VOCAB_SIZE) -> Tokenizer:
    """Fit byte-level BPE on `texts` (deterministic for a fixed input order)."""
    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    # add_prefix_space=False: a leading space would be invented on decode otherwise, breaking
    # decode(encode(s)) == s.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes: nothing unknown
        min_frequency=2,
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    bos = tok.token_to_id("<bos>")
    # Gemma prepends BOS to every sequence; the activation pipeline relies on position 0
    # being BOS (and masks it out), so the tokenizer does it, not each caller.
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", bos)]
    )
    return tok


def save_hf_tokenizer(tok: Tokenizer, folder: str | Path, model_max_length: int) -> None:
    """Write tokenizer.json + tokenizer_config.json + special_tokens_map.json."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    special = {
        "bos_token": "<bos>",
        "eos_token": "<eos>",
        "pad_token": "<pad>",
        "unk_token": "<unk>",
    }
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **special,
        "add_bos_token": True,
        "add_eos_token": False,
        "model_max_length": model_max_length,
        "padding_side": "right",
        # The default clean-up rewrites " ." to "." on decode: wrong for code.
        "clean_up_tokenization_spaces": False,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
