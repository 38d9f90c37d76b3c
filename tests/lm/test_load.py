"""One loader for every causal LM: the embedded model offline, any saved folder, clear errors."""

from __future__ import annotations

import inspect

import huggingface_hub
import pytest
import torch
from transformers import Gemma2Config, Gemma2ForCausalLM, LlamaConfig, LlamaForCausalLM

from saelab.lm.load import ModelLoadError, load_model


@pytest.fixture
def offline(monkeypatch):
    # The constant is read once at import, so patch it as well as the environment.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def test_embedded_tiny_gemma_loads_offline(offline):
    model = load_model("tiny-gemma-2")
    cfg = model.config
    assert type(model).__name__ == "Gemma2ForCausalLM"
    assert (cfg.num_hidden_layers, cfg.hidden_size) == (26, 128)  # Gemma 2 2B depth
    assert cfg.num_attention_heads * cfg.head_dim == 128 and cfg.num_key_value_heads == 2
    assert cfg.layer_types[:2] == ["sliding_attention", "full_attention"]
    assert cfg.attn_logit_softcapping and cfg.final_logit_softcapping
    assert cfg.tie_word_embeddings and cfg.max_position_embeddings >= 1024
    assert cfg._attn_implementation == "eager"  # exact soft-capped attention
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert next(model.parameters()).dtype == torch.float32
    logits = model(input_ids=torch.tensor([[2, 100, 200, 300]])).logits
    assert logits.shape == (1, 4, cfg.vocab_size) and torch.isfinite(logits).all()


def _tiny_gemma2():
    return Gemma2ForCausalLM(
        Gemma2Config(
            vocab_size=64,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=8,
            sliding_window=4,
            attn_implementation="eager",
        )
    )


def _tiny_llama():
    return LlamaForCausalLM(
        LlamaConfig(
            vocab_size=64,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            attn_implementation="eager",
        )
    )


@pytest.mark.parametrize("build", [_tiny_gemma2, _tiny_llama], ids=["gemma2", "llama"])
def test_loads_any_saved_causal_lm_by_path(tmp_path, offline, build):
    torch.manual_seed(0)
    original = build().eval()
    original.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    loaded = load_model(tmp_path)
    x = torch.randint(0, 64, (2, 7))
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=x).logits, original(input_ids=x).logits)
    assert loaded.dtype == torch.float32
    assert load_model(str(tmp_path), dtype="bfloat16").dtype == torch.bfloat16


def test_missing_local_folder_fails_helpfully(tmp_path):
    with pytest.raises(ModelLoadError, match="no such local folder") as e:
        load_model(str(tmp_path / "not-there"))
    assert "tiny-gemma-2" in str(e.value)
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(tmp_path)  # exists, but is not a model folder


def test_unknown_hub_id_fails_helpfully(offline):
    with pytest.raises(ModelLoadError) as e:
        load_model("saelab-test-nobody/no-such-model-xyz")
    msg = str(e.value)
    for needed in (
        "saelab-test-nobody/no-such-model-xyz",
        "huggingface-cli login",
        "model=tiny-gemma-2",
        "HF_HUB_OFFLINE",
    ):
        assert needed in msg, needed


def test_remote_code_is_opt_in():
    assert inspect.signature(load_model).parameters["trust_remote_code"].default is False
    with pytest.raises(ValueError, match="model.dtype"):
        load_model("tiny-gemma-2", dtype="float33")


def test_without_network_an_unknown_hub_id_fails_without_waiting_on_retries():
    """Not offline mode, just no network (this machine): the hub is probed once, found
    unreachable, and the local cache alone is asked. huggingface_hub's own retries take about
    30 s here before the same error; the bound below is ten times what the probe takes."""
    import time

    from saelab.lm.load import hub_reachable

    if hub_reachable():
        pytest.skip("the hub is reachable from this machine")
    start = time.perf_counter()
    with pytest.raises(ModelLoadError) as e:
        load_model("saelab-test-nobody/no-such-model-xyz")
    assert time.perf_counter() - start < 10
    assert "https://huggingface.co is unreachable from here" in str(e.value)
    assert "model=tiny-gemma-2" in str(e.value)


@pytest.fixture
def bars_on():
    """transformers' bars as a fresh process has them (a run off a terminal turns them off)."""
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.enable_progress_bar()
    yield
    if not was_on:
        hf_logging.disable_progress_bar()


def test_loading_the_embedded_model_draws_no_bar_of_transformers(offline, bars_on, capfd):
    load_model("tiny-gemma-2")
    assert "Loading weights" not in capfd.readouterr().err


def test_transformers_still_warns_of_weights_the_folder_lacks(tmp_path, offline, bars_on):
    """Only the bar is silenced: a checkpoint short of a weight is still reported."""
    import logging

    from safetensors.torch import load_file, save_file

    _tiny_llama().save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    del weights["model.norm.weight"]
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logger = logging.getLogger("transformers")
    # transformers' loggers as a fresh process has them: logging set up by another test in
    # this process (disabled loggers, a raised level) must not decide this one.
    report = logging.getLogger("transformers.utils.loading_report")
    chain = [logger, report]
    saved = [(lg.disabled, lg.level, lg.propagate) for lg in chain]
    logger.disabled = report.disabled = False
    report.propagate = True
    logger.setLevel(logging.WARNING)
    logger.addHandler(handler)
    try:
        load_model(tmp_path)
    finally:
        logger.removeHandler(handler)
        for lg, (disabled, level, propagate) in zip(chain, saved):
            lg.disabled, lg.propagate = disabled, propagate
            lg.setLevel(level)
    assert any("model.norm.weight" in r.getMessage() for r in records)
