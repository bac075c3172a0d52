"""Tiny transformers language models (random init, no download) and token ids.

Each builder seeds torch and returns ``(model, ids)``; ``model(ids,
labels=ids).loss`` is a scalar loss.
"""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")


def tiny_gpt2(attn: str = "eager") -> tuple:
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_layer=2,
        n_embd=32,
        n_head=2,
        vocab_size=64,
        n_positions=32,
        attn_implementation=attn,
    )
    return transformers.GPT2LMHeadModel(config), torch.randint(0, 64, (2, 16))


def tiny_llama(attn: str = "eager", layers: int = 2) -> tuple:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32,
        attn_implementation=attn,
    )
    return transformers.LlamaForCausalLM(config), torch.randint(0, 64, (2, 16))
