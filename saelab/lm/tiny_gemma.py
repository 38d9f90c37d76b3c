"""The architecture of `tiny-gemma-2`: Gemma 2 2B's shape of computation at toy width.

Kept identical to Gemma 2 in everything that affects where and how activations are read:
26 blocks (so `layer=0..25` means the same depth range as Gemma 2 2B), grouped-query
attention, alternating sliding-window / global layers, attention and final-logit
soft-capping, the pre- AND post-norms around attention and MLP (the `mlp` site is the
output of `post_feedforward_layernorm`), GeGLU MLP, embeddings scaled by sqrt(d_model) and
tied to the output head. Only the widths are shrunk so it trains on one CPU core.
"""

from __future__ import annotations

import torch
from transformers import Gemma2Config, Gemma2ForCausalLM

N_LAYERS = 26
D_MODEL = 128
N_HEADS = 4
N_KV_HEADS = 2
HEAD_DIM = 32  # d_attn = N_HEADS * HEAD_DIM = 128 (the `attn` site width)
D_MLP = 512
MAX_POSITIONS = 1024


def tiny_gemma2_config(vocab_size: int, pad_id: int, bos_id: int, eos_id: int) -> Gemma2Config:
    """The Gemma2Config of tiny-gemma-2 for a tokenizer with the given special ids."""
    return Gemma2Config(
        vocab_size=vocab_size,
        hidden_size=D_MODEL,
        intermediate_size=D_MLP,
        num_hidden_layers=N_LAYERS,
        num_attention_heads=N_HEADS,
        num_key_value_heads=N_KV_HEADS,
        head_dim=HEAD_DIM,
        hidden_activation="gelu_pytorch_tanh",
        max_position_embeddings=MAX_POSITIONS,
        # Gemma 2 scales queries by query_pre_attn_scalar**-0.5 rather than head_dim**-0.5;
        # for 2B they are equal (256), so keep that equality at our head_dim.
        query_pre_attn_scalar=HEAD_DIM,
        # Even layers local, odd layers global, as in Gemma 2. Window 128 < the pretraining
        # context (256), so the local layers really are local during training.
        sliding_window=128,
        layer_types=[
            "sliding_attention" if i % 2 == 0 else "full_attention" for i in range(N_LAYERS)
        ],
        attn_logit_softcapping=50.0,
        final_logit_softcapping=30.0,
        rope_theta=10000.0,
        rms_norm_eps=1e-6,
        initializer_range=0.02,
        tie_word_embeddings=True,
        pad_token_id=pad_id,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        # Soft-capping is not supported by the SDPA/flash kernels: eager is what Gemma 2 needs
        # for exact logits.
        attn_implementation="eager",
    )


def init_for_depth(model: Gemma2ForCausalLM) -> Gemma2ForCausalLM:
    """Re-initialise two scales so a 26-block, 128-wide Gemma 2 trains quickly from scratch.

    Gemma 2's post-norms make every attention/MLP branch add a vector of RMS (1 + gain) = 1
    to the residual stream, while the default embedding init (std 0.02, times sqrt(d_model))
    gives the token itself an RMS of only ~0.23. At init, 52 random unit-size branch outputs
    drown the token identity, and in a short trial the first ~100 steps were spent barely
    reaching the unigram loss. So: embeddings of RMS ~1 (std 1/sqrt(d_model)), and post-norm
    gains of 1/sqrt(2 * n_layers), so that all branches together start as large as the
    embedding (the same idea as GPT-2's depth-scaled residual init). The architecture and the
    forward pass are unchanged; only starting values differ, and training moves them freely.
    """
    cfg = model.config
    with torch.no_grad():
        model.model.embed_tokens.weight.normal_(0.0, cfg.hidden_size**-0.5)
        branch_scale = (2 * cfg.num_hidden_layers) ** -0.5
        for layer in model.model.layers:
            # Gemma2RMSNorm multiplies by (1 + weight), so weight = scale - 1.
            layer.post_attention_layernorm.weight.fill_(branch_scale - 1.0)
            layer.post_feedforward_layernorm.weight.fill_(branch_scale - 1.0)
    return model


def build_tiny_gemma2(vocab_size: int, pad_id: int, bos_id: int, eos_id: int) -> Gemma2ForCausalLM:
    """A freshly initialised tiny-gemma-2 (call under a fixed seed for reproducibility)."""
    return init_for_depth(Gemma2ForCausalLM(tiny_gemma2_config(vocab_size, pad_id, bos_id, eos_id)))
