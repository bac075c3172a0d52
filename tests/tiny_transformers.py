"""Tiny transformers language models (random init, no download) and token ids.

Each builder seeds torch and returns ``(model, ids)``; ``model(ids,
labels=ids).loss`` is a scalar loss. The configs come from
``gradgraph.examples.tiny_models``.
"""

from __future__ import annotations

import pytest
import torch

from gradgraph.examples import tiny_models

pytest.importorskip("transformers")


def tiny_gpt2(attn: str = "eager") -> tuple:
    torch.manual_seed(0)
    return tiny_models.gpt2(attn=attn), torch.randint(0, 64, (2, 16))


def tiny_llama(attn: str = "eager", layers: int = 2) -> tuple:
    torch.manual_seed(0)
    model = tiny_models.llama(layers=layers, heads=4, kv_heads=2, attn=attn)
    return model, torch.randint(0, 64, (2, 16))
