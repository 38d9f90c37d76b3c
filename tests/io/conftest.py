"""Fixtures of the format tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def gemma2_dir(tmp_path_factory):
    """A random 2-layer Gemma2ForCausalLM whose norms have non-trivial gains."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    folder = tmp_path_factory.mktemp("gemma2")
    torch.manual_seed(0)
    model = Gemma2ForCausalLM(
        Gemma2Config(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=16,
            max_position_embeddings=64,
        )
    )
    with torch.no_grad():
        for layer in model.model.layers:
            layer.pre_feedforward_layernorm.weight.copy_(torch.randn(32))
    model.save_pretrained(folder, safe_serialization=True)
    return folder, model.eval()
