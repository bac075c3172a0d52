"""An embedding's weight gets its columns on the rows its ids pick.

:class:`IndexedRowColumns` stands for the columns the dense path wrote out
``V`` rows wide: checked against torch's embedding backward column by column
(rows repeated within and across samples), squared without writing them out,
and added to the same source's columns from a tied output layer at the
leaf. Whole models (padding rows, one table read twice, a tied head, a
table that goes through an op first) match the dense float64 Hessian.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from gradgraph.derivatives.propagation import engine
from gradgraph.derivatives.propagation.base import OpContext
from gradgraph.derivatives.propagation.columns import (
    DenseColumns,
    IndexedRowColumns,
    OuterColumns,
    SampleColumns,
    leaf_diagonal,
)
from gradgraph.derivatives.propagation.registry import rule_for

from .model_reference import assert_propagates_exactly

VOCAB, WIDTH = 5, 3
# sample 0 repeats row 1, sample 2 row 4 twice; rows 1 and 4 in several samples
ROWS = torch.tensor([[1, 0, 1], [4, 3, 1], [4, 4, 4]])


def _signs(*shape):
    return torch.randint(0, 2, shape).double() * 2 - 1


def _block(columns=2, rows=ROWS) -> IndexedRowColumns:
    n, p = rows.shape
    data = torch.randn(columns, n, p, WIDTH, dtype=torch.float64)
    return IndexedRowColumns(data, rows, _signs(columns, n), (VOCAB, WIDTH))


def _by_backward(block: IndexedRowColumns) -> torch.Tensor:
    """Column ``(n, c)``: torch's embedding backward of ``data[c, n]``."""
    w = torch.zeros(VOCAB, WIDTH, dtype=torch.float64, requires_grad=True)
    cols = []
    for n in range(block.rows.shape[0]):
        out = F.embedding(block.rows[n], w)
        for c in range(block.count):
            grad = torch.autograd.grad(out, w, block.data[c, n], retain_graph=True)
            cols.append(grad[0])
    return torch.stack(cols)


def _square_sum(dense: DenseColumns) -> torch.Tensor:
    return torch.einsum("k,k...->...", dense.sign, dense.data.square())


def test_written_out_the_columns_are_the_embeddings_backward():
    torch.manual_seed(0)
    block = _block()
    dense = block.to_dense((VOCAB, WIDTH))
    torch.testing.assert_close(dense.data, _by_backward(block))
    torch.testing.assert_close(dense.sign, block.sign.T.reshape(-1))
    assert block.column_bytes == 3 * VOCAB * WIDTH * 8  # N columns per slice


def test_squared_repeated_rows_add_first():
    torch.manual_seed(0)
    block = _block()
    expected = _square_sum(block.to_dense((VOCAB, WIDTH)))
    torch.testing.assert_close(block.square_sum((VOCAB, WIDTH)), expected)
    unique = _block(rows=torch.tensor([[1, 0], [4, 1]]))  # no repeat in a sample
    expected = _square_sum(unique.to_dense((VOCAB, WIDTH)))
    torch.testing.assert_close(unique.square_sum((VOCAB, WIDTH)), expected)
    flat = (VOCAB * WIDTH,)  # a parameter seen flat
    torch.testing.assert_close(
        block.square_sum(flat), block.square_sum((5, 3)).flatten()
    )


def test_slices_add_up_to_the_whole():
    torch.manual_seed(0)
    block = _block(columns=3)
    parts = [block.take(0, 1), block.take(1, 3)]
    total = sum(p.square_sum((VOCAB, WIDTH)) for p in parts)
    torch.testing.assert_close(total, block.square_sum((VOCAB, WIDTH)))


def _others(sign: torch.Tensor):
    """Columns of the same source in other layouts (a tied head's), sign ``[C, N]``."""
    c, n = sign.shape
    for transposed in (False, True):
        a, b = (WIDTH, VOCAB) if transposed else (VOCAB, WIDTH)
        left = torch.randn(c, n, a, dtype=torch.float64)
        right = torch.randn(1, n, b, dtype=torch.float64)  # shared by the columns
        yield OuterColumns(left, right, sign, transposed)
    data = torch.randn(c * n, VOCAB, WIDTH, dtype=torch.float64)
    yield DenseColumns(data, sign.T.reshape(-1))


@pytest.mark.parametrize("other", range(3), ids=["outer", "outer-t", "dense"])
def test_at_the_leaf_parts_of_one_source_add_before_squaring(other):
    torch.manual_seed(0)
    block = _block()
    shape = (VOCAB, WIDTH)
    # the same 6 columns as 6 samples of one column each (numbered alike)
    per_column = block.flat()
    assert per_column.sign.shape == (1, 6)
    for parts in (
        [block, list(_others(block.sign))[other]],
        [per_column, block, list(_others(block.sign))[other]],
        [block, *_others(block.sign)],
        [block, per_column],
    ):
        dense = [p.to_dense(shape) for p in parts]
        total = DenseColumns(sum(d.data for d in dense), dense[0].sign)
        torch.testing.assert_close(leaf_diagonal(parts, shape), _square_sum(total))


class TwoTables(nn.Module):
    """A table read twice (source and target ids, one with padding), a tied head."""

    def __init__(self, **options):
        super().__init__()
        self.table = nn.Embedding(VOCAB, WIDTH, **options)
        self.pos = nn.Embedding(3, WIDTH)
        self.mix = nn.Linear(WIDTH, WIDTH)

    def forward(self, ids):
        source, target = ids
        h = self.table(source).tanh().mean(1, keepdim=True)
        h = h + self.table(target) + self.pos(torch.arange(target.shape[1]))
        h = torch.tanh(self.mix(h))
        return F.embedding(target, self.table.weight * 0.5) * h, h @ self.table.weight.T


def _loss(outputs):
    scaled, logits = outputs
    return F.cross_entropy(logits.reshape(-1, VOCAB), ROWS[:2].reshape(-1)) + (
        scaled.sin().sum()
    )


# source and target ids, stacked
IDS = torch.tensor([[[0, 2, 2], [1, 4, 0]], [[3, 3, 0], [4, 0, 4]]])


# scale_grad_by_freq is left out: torch's backward is then no transpose of the
# forward, so the double-backward reference is no symmetric Hessian
@pytest.mark.parametrize("options", [{}, {"padding_idx": 0}], ids=["plain", "padding"])
def test_models_with_embeddings_match_the_dense_hessian(options, monkeypatch):
    seen = []

    def spy(parts, shape):
        seen.extend(type(p) for p in parts)
        return leaf_diagonal(parts, shape)

    monkeypatch.setattr(engine, "leaf_diagonal", spy)
    torch.manual_seed(0)
    model = TwoTables(**options).double()
    assert_propagates_exactly(model, _loss, IDS, op="EmbeddingBackward0")
    assert IndexedRowColumns in seen


def test_the_rule_keeps_rows_unless_a_sample_has_more_positions_than_rows():
    w = torch.randn(VOCAB, WIDTH, dtype=torch.float64, requires_grad=True)
    out = F.embedding(ROWS, w)  # 3 samples of 3 positions; 9 in all > VOCAB
    ctx = OpContext(out.grad_fn, out, tuple(out.shape), [(VOCAB, WIDTH)], None, {})
    data = torch.randn(2, *out.shape, dtype=torch.float64)
    rule = rule_for("EmbeddingBackward0")
    per_sample = rule.pullback(ctx, SampleColumns(data, _signs(2, 3)), 0)
    assert isinstance(per_sample, IndexedRowColumns)
    dense = rule.pullback(ctx, DenseColumns(data, _signs(2)), 0)
    assert isinstance(dense, DenseColumns)
    expected = torch.stack(
        [torch.autograd.grad(out, w, d, retain_graph=True)[0] for d in data]
    )
    torch.testing.assert_close(dense.data, expected)
