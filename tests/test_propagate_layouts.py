"""Per-token and grouped column layouts, and compressed columns: same exact diagonal.

A language model's curvature columns start on one token each (the loss's
rows) and stay there through the ops that act on tokens apart; they go per
sample at attention, and per-sample columns keep their sample through the
``view(B * L, F)`` in front of every Linear layer. Columns of sources that
never meet again are compressed to at most one per entry. Each of these is
checked against the dense float64 Hessian on a tiny GPT-2-like model (tied
embedding, causal attention by ``bmm``, ``logits[:, :-1]``), with and without
compression everywhere it applies.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from gradgraph.derivatives.propagation import columns, engine, registry
from gradgraph.derivatives.propagation.columns import (
    DenseColumns,
    GroupColumns,
    SampleColumns,
    TokenColumns,
    compressed,
)

from .model_reference import assert_propagates_exactly

VOCAB, WIDTH, HEADS, BATCH, LENGTH = 5, 4, 2, 2, 3


class TinyLM(nn.Module):
    """Embedding, one pre-norm attention + MLP block, tied head (GPT-2's layout)."""

    def __init__(self):
        super().__init__()
        self.wte = nn.Embedding(VOCAB, WIDTH)
        self.wpe = nn.Embedding(LENGTH, WIDTH)
        self.ln1, self.ln2 = nn.LayerNorm(WIDTH), nn.LayerNorm(WIDTH)
        self.qkv, self.proj = nn.Linear(WIDTH, 3 * WIDTH), nn.Linear(WIDTH, WIDTH)
        self.up, self.down = nn.Linear(WIDTH, 2 * WIDTH), nn.Linear(2 * WIDTH, WIDTH)

    @staticmethod
    def linear(layer, x):  # transformers' Conv1D: view(B * L, F), addmm, view
        out = torch.addmm(layer.bias, x.reshape(-1, x.shape[-1]), layer.weight.T)
        return out.view(*x.shape[:-1], -1)

    def forward(self, ids):
        b, ell = ids.shape
        h = self.wte(ids) + self.wpe(torch.arange(ell))
        q, k, v = self.linear(self.qkv, self.ln1(h)).split(WIDTH, dim=2)
        d = WIDTH // HEADS

        def heads(t):  # [B, L, F] -> [B * H, L, d]
            return t.view(b, ell, HEADS, d).transpose(1, 2).reshape(b * HEADS, ell, d)

        scores = torch.bmm(heads(q), heads(k).transpose(1, 2)) / math.sqrt(d)
        causal = torch.ones(ell, ell, dtype=torch.bool).tril()
        weights = scores.masked_fill(~causal, float("-inf")).softmax(-1)
        mixed = torch.bmm(weights, heads(v)).view(b, HEADS, ell, d).transpose(1, 2)
        h = h + self.linear(self.proj, mixed.reshape(b, ell, WIDTH))
        h = h + self.linear(self.down, F.gelu(self.linear(self.up, self.ln2(h))))
        return h @ self.wte.weight.T  # the head shares the embedding


IDS = torch.tensor([[0, 3, 1], [4, 4, 2]])


def next_token_loss(logits):
    flat = logits[:, :-1].reshape(-1, VOCAB)
    return F.cross_entropy(flat, IDS[:, 1:].reshape(-1))


def tiny_lm() -> nn.Module:
    torch.manual_seed(0)
    return TinyLM().double()


def test_a_tiny_language_model_matches_the_dense_hessian():
    assert_propagates_exactly(tiny_lm(), next_token_loss, IDS)


def test_with_compression_wherever_it_applies_the_diagonal_is_the_same(monkeypatch):
    calls = []

    def counted(block, work):
        out = compressed(block, work)
        calls.append(out is not block)
        return out

    monkeypatch.setattr(columns, "COMPRESS_RATIO", 1.01)
    monkeypatch.setattr(columns, "COMPRESS_COST", 0.0)
    monkeypatch.setattr(engine, "compressed", counted)
    assert_propagates_exactly(tiny_lm(), next_token_loss, IDS)
    assert any(calls)  # some columns were compressed


def test_matrix_products_get_columns_per_token_or_per_sample(monkeypatch):
    """No column reaches a Linear layer written out over the whole batch."""
    seen = []
    for name in ("AddmmBackward0", "MmBackward0"):
        rule = registry.rule_for(name)
        pullback = type(rule).pullback

        def spy(self, ctx, block, pos, pullback=pullback):
            seen.append(type(block))
            return pullback(self, ctx, block, pos)

        monkeypatch.setattr(type(rule), "pullback", spy)
    assert_propagates_exactly(tiny_lm(), next_token_loss, IDS)
    assert GroupColumns in seen and SampleColumns in seen
    assert DenseColumns not in seen


def _curvature(block, shape):
    """The dense matrix ``sum_c s_c v_c v_c^T`` the columns stand for."""
    dense = block.to_dense(shape)
    flat = dense.data.reshape(dense.count, -1)
    return flat.T @ (dense.sign.unsqueeze(1) * flat)


def _signs(*shape):
    return torch.randint(0, 2, shape).double() * 2 - 1


@pytest.mark.parametrize("one_entry", [False, True], ids=["random", "one_entry"])
@pytest.mark.parametrize("layout", ["dense", "sample", "token"])
def test_compressed_columns_stand_for_the_same_curvature(layout, one_entry):
    """Random columns (an eigendecomposition), and columns with one entry each,
    an elementwise op's own curvature (their signed sum is diagonal: no eigh)."""
    torch.manual_seed(0)
    shape = (2, 3, 4)
    lead = {"dense": (), "sample": (2,), "token": (2, 3)}[layout]
    entries = math.prod(shape[len(lead) :])
    count = 3 * entries
    data = torch.randn(count, *shape, dtype=torch.float64)
    if one_entry:
        where = torch.randint(0, entries, (count,))
        data = torch.zeros(count, *lead, entries, dtype=torch.float64)
        data[torch.arange(count), ..., where] = torch.randn(count, *lead).double()
    kind = {"dense": DenseColumns, "sample": SampleColumns, "token": TokenColumns}
    block = kind[layout](data.reshape(count, *shape), _signs(count, *lead))
    small = compressed(block)
    assert type(small) is type(block) and small.count == entries
    torch.testing.assert_close(_curvature(small, shape), _curvature(block, shape))


def test_few_columns_are_left_as_they_are():
    block = DenseColumns(torch.randn(3, 4, dtype=torch.float64), _signs(3))
    assert compressed(block) is block


class GatedTokens(nn.Module):
    """A per-token gate from one fused Linear split in two (SwiGLU's layout)."""

    def __init__(self):
        super().__init__()
        self.wte = nn.Embedding(VOCAB, WIDTH)
        self.fused = nn.Linear(WIDTH, 2 * WIDTH)

    def forward(self, ids):
        a, b = self.fused(self.wte(ids)).split(WIDTH, dim=2)
        return (a * torch.sigmoid(b)) @ self.wte.weight.T


def test_per_token_columns_stay_per_token_through_a_split(monkeypatch):
    seen = []
    rule = registry.rule_for("SplitBackward0")
    embed = type(rule).embed

    def spy(self, ctx, block, out_nr):
        placed = embed(self, ctx, block, out_nr)
        seen.append(type(placed.block))
        return placed

    monkeypatch.setattr(type(rule), "embed", spy)
    torch.manual_seed(0)
    assert_propagates_exactly(GatedTokens().double(), next_token_loss, IDS)
    assert TokenColumns in seen
