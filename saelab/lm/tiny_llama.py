"""The architecture of `tiny-llama`: a small Llama-layout causal LM, saelab's second test-bed LM.

It differs from tiny-gemma-2 in everything that shapes activations: pre-norm only (no post-norms,
so the residual stream grows freely across depth, as in Llama, Mistral and SmolLM), SwiGLU MLP,
no soft-capping, no embedding scaling, global attention in every layer, and fewer, wider layers
(8 x 256 instead of 26 x 128). It is pretrained on English prose (saelab/lm/prose.py) rather than
Python source. The ``mlp`` site of this layout is the output of ``mlp`` (docs/maths.md §5).
"""

from __future__ import annotations

from transformers import LlamaConfig, LlamaForCausalLM

N_LAYERS = 8
D_MODEL = 256
N_HEADS = 4
N_KV_HEADS = 2
HEAD_DIM = 64  # d_attn = N_HEADS * HEAD_DIM = 256 (the `attn` site width)
D_MLP = 768
MAX_POSITIONS = 1024


def tiny_llama_config(vocab_size: int, pad_id: int, bos_id: int, eos_id: int) -> LlamaConfig:
    """The LlamaConfig of tiny-llama for a tokenizer with the given special ids."""
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=D_MODEL,
        intermediate_size=D_MLP,
        num_hidden_layers=N_LAYERS,
        num_attention_heads=N_HEADS,
        num_key_value_heads=N_KV_HEADS,
        head_dim=HEAD_DIM,
        hidden_act="silu",
        max_position_embeddings=MAX_POSITIONS,
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
        initializer_range=0.02,
        tie_word_embeddings=True,
        pad_token_id=pad_id,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
    )


def build_tiny_llama(vocab_size: int, pad_id: int, bos_id: int, eos_id: int) -> LlamaForCausalLM:
    """A freshly initialised tiny-llama (call under a fixed seed for reproducibility).
    transformers' default init (normal, std 0.02) is kept: with pre-norm only, every branch
    starts small against the embedding and the depth is modest, so it trains from step 0."""
    return LlamaForCausalLM(tiny_llama_config(vocab_size, pad_id, bos_id, eos_id))
