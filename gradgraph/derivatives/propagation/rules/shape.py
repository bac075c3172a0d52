"""Rules for ops that move values without changing them: views, transposes, sums.

All linear, with no second-order term: view / reshape / squeeze / unsqueeze,
transpose and permute, expand, sum and mean over dims, running sums
(``cumsum``), a max or min along a dim (a selection, linear almost
everywhere), clone and alias, and the hook nodes module backward hooks add.

Example:
    >>> import torch
    >>> from gradgraph.derivatives import propagated_hessian_diagonal
    >>> w = torch.tensor([[1.0, 2.0]], requires_grad=True)
    >>> propagated_hessian_diagonal((w.T.reshape(-1) ** 3).sum(), w).round()  # 6 w
    tensor([[ 6., 12.]])
"""

from __future__ import annotations

from ..base import (
    Columns,
    Identity,
    Rule,
    per_sample_or_dense,
    saved_dim,
    unbroadcast,
)
from ..columns import (
    DenseColumns,
    GroupColumns,
    OuterColumns,
    ProductColumns,
    SampleColumns,
    TokenColumns,
)
from ..registry import register


def _tokens_as_rows(block: TokenColumns, shape: tuple) -> Columns | None:
    """Per-token columns of ``[B, L, ...]`` at a ``shape`` view: still per token
    when the view keeps ``B, L`` in front, per row (sample) when it merges
    them (``[B * L, ...]``, the view in front of a transformer's Linear)."""
    lead = tuple(block.data.shape[1:3])
    if tuple(shape[:2]) == lead:
        return TokenColumns(block.data.reshape(-1, *shape), block.sign)
    if shape[0] == lead[0] * lead[1] and tuple(shape[1:]) == block.data.shape[3:]:
        return SampleColumns(
            block.data.reshape(-1, *shape), block.sign.reshape(-1, shape[0])
        )
    return None


def _rows_as_tokens(block: SampleColumns, shape: tuple) -> Columns | None:
    """Per-sample columns of a ``[B * L, ...]`` value at a ``[B, L, ...]`` view:
    per token."""
    if len(shape) < 3 or shape[0] * shape[1] != block.samples:
        return None
    if tuple(shape[2:]) != block.data.shape[2:]:
        return None
    sign = block.sign.reshape(-1, shape[0], shape[1])
    return TokenColumns(block.data.reshape(-1, *shape), sign)


def _samples_as_groups(block: SampleColumns, shape: tuple) -> Columns | None:
    """Per-sample columns of ``[B, L, ...]`` at a ``[B * L, ...]`` view: grouped."""
    lead = block.data.shape[1:3]
    if block.data.dim() < 4 or len(shape) != block.data.dim() - 2:
        return None
    if shape[0] != lead[0] * lead[1] or tuple(shape[1:]) != block.data.shape[3:]:
        return None
    return GroupColumns(block.data, block.sign)


class Reshape(Rule):
    """view / reshape / squeeze / unsqueeze / flatten: same values, new shape.

    Per-token columns stay per token (or per row of a ``[B * L, K]`` view,
    the one in front of every Linear layer of a transformer) and back.
    """

    takes_tokens = True
    takes_groups = True

    def pullback(self, ctx, block, pos):
        shape = ctx.in_shapes[pos]
        if isinstance(block, TokenColumns):
            kept = _tokens_as_rows(block, shape)
            if kept is not None:
                return kept
            block = block.per_sample()
        if isinstance(block, GroupColumns) and tuple(shape) == block.data.shape[1:]:
            return block.samples_view()
        if isinstance(block, SampleColumns):
            kept = _rows_as_tokens(block, shape) or _samples_as_groups(block, shape)
            if kept is not None:
                return kept
            if len(shape) >= 1 and shape[0] == block.samples:
                return SampleColumns(
                    block.data.reshape(*block.data.shape[:2], *shape[1:]), block.sign
                )
        block = block.to_dense(ctx.out_shape)
        return DenseColumns(block.data.reshape(-1, *shape), block.sign)


class Transpose(Rule):
    """TBackward0: the columns transpose; outer products swap their factors."""

    takes_products = True

    def pullback(self, ctx, block, pos):
        if isinstance(block, OuterColumns | ProductColumns):
            return block.transpose()
        block = block.to_dense(ctx.out_shape)
        return DenseColumns(block.data.transpose(-1, -2), block.sign)


class Permute(Rule):
    """permute / ``.T``: the columns take the inverse permutation."""

    takes_tokens = True

    def pullback(self, ctx, block, pos):
        dims = [saved_dim(d, len(ctx.out_shape)) for d in ctx.fn._saved_dims]
        inverse = sorted(range(len(dims)), key=dims.__getitem__)
        if isinstance(block, TokenColumns):
            if dims[:2] == [0, 1]:
                order = [0, 1, 2, *(d + 1 for d in inverse[2:])]
                return TokenColumns(block.data.permute(order), block.sign)
            block = block.per_sample()
        if isinstance(block, OuterColumns) and dims == [1, 0]:
            return block.transpose()
        if isinstance(block, SampleColumns) and dims[0] == 0:
            order = [0, 1, *(d + 1 for d in inverse[1:])]
            return SampleColumns(block.data.permute(order), block.sign)
        block = block.to_dense(ctx.out_shape)
        order = [0, *(d + 1 for d in inverse)]
        return DenseColumns(block.data.permute(order), block.sign)


class Expand(Rule):
    takes_tokens = True

    def pullback(self, ctx, block, pos):
        return unbroadcast(block, ctx.in_shapes[pos], ctx.out_shape)


class SumMean(Rule):
    """sum / mean over some dims (SumBackward1, MeanBackward1)."""

    takes_tokens = True

    def __init__(self, mean: bool):
        self.mean = mean

    def pullback(self, ctx, block, pos):
        shape = ctx.in_shapes[pos]
        dims = sorted(saved_dim(d, len(shape)) for d in ctx.fn._saved_dim)
        dims = dims or range(len(shape))
        keep = ctx.fn._saved_keepdim
        count = 1
        for d in dims:
            count *= shape[d]
        factor = 1 / count if self.mean else 1
        if isinstance(block, TokenColumns) and min(dims) < 2:
            block = block.per_sample()
        lead = block.sign.dim() - 1 if isinstance(block, TokenColumns) else 1
        if isinstance(block, SampleColumns | TokenColumns) and min(dims) >= lead:
            data = block.data
            if not keep:
                for d in dims:
                    data = data.unsqueeze(d + 1)
            data = data.expand(*data.shape[: 1 + lead], *shape[lead:]) * factor
            return type(block)(data, block.sign)
        block = block.to_dense(ctx.out_shape)
        data = block.data
        if not keep:
            for d in dims:
                data = data.unsqueeze(d + 1)
        return DenseColumns(data.expand(data.shape[0], *shape) * factor, block.sign)


class MaxAlongDim(Rule):
    """``x.max(dim)`` / ``x.min(dim)`` values: a selection, linear almost everywhere."""

    def pullback(self, ctx, block, pos):
        fn = ctx.fn
        shape = ctx.in_shapes[pos]
        dim = saved_dim(fn._saved_dim, len(shape))
        block = per_sample_or_dense(block, ctx.out_shape, dim)
        data, index = block.data, fn._saved_indices
        if not fn._saved_keepdim:
            data, index = data.unsqueeze(dim + 1), index.unsqueeze(dim)
        out = data.new_zeros(data.shape[0], *shape)
        out.scatter_(dim + 1, index.unsqueeze(0).expand_as(data), data)
        return type(block)(out, block.sign)


class Cumsum(Rule):
    """``cumsum`` along a dim: pulled back by the running sum from the end."""

    def pullback(self, ctx, block, pos):
        dim = saved_dim(ctx.fn._saved_dim, len(ctx.out_shape))
        block = per_sample_or_dense(block, ctx.out_shape, dim)
        data = block.data.flip(dim + 1).cumsum(dim + 1).flip(dim + 1)
        return type(block)(data, block.sign)


register(
    Reshape(),
    "ViewBackward0",
    "ReshapeAliasBackward0",
    "UnsafeViewBackward0",
    "SqueezeBackward0",
    "SqueezeBackward1",
    "UnsqueezeBackward0",
)
register(Transpose(), "TBackward0")
register(Permute(), "PermuteBackward0")
register(Expand(), "ExpandBackward0")
register(Identity(), "CloneBackward0", "AliasBackward0", "BackwardHookFunctionBackward")
register(Rule(), "SumBackward0", "MeanBackward0")
register(SumMean(mean=False), "SumBackward1")
register(SumMean(mean=True), "MeanBackward1")
register(MaxAlongDim(), "MaxBackward0", "MinBackward0")
register(Cumsum(), "CumsumBackward0")
