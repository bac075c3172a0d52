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
    Identity,
    Rule,
    per_sample_or_dense,
    saved_dim,
    unbroadcast,
)
from ..columns import DenseColumns, OuterColumns, SampleColumns
from ..registry import register


class Reshape(Rule):
    """view / reshape / squeeze / unsqueeze / flatten: same values, new shape."""

    def pullback(self, ctx, block, pos):
        shape = ctx.in_shapes[pos]
        if isinstance(block, SampleColumns):
            if len(shape) >= 1 and shape[0] == block.samples:
                return SampleColumns(
                    block.data.reshape(*block.data.shape[:2], *shape[1:]), block.sign
                )
        block = block.to_dense(ctx.out_shape)
        return DenseColumns(block.data.reshape(-1, *shape), block.sign)


class Transpose(Rule):
    """TBackward0: the columns transpose; outer products swap their factors."""

    def pullback(self, ctx, block, pos):
        if isinstance(block, OuterColumns):
            return block.transpose()
        block = block.to_dense(ctx.out_shape)
        return DenseColumns(block.data.transpose(-1, -2), block.sign)


class Permute(Rule):
    """permute / ``.T``: the columns take the inverse permutation."""

    def pullback(self, ctx, block, pos):
        dims = [saved_dim(d, len(ctx.out_shape)) for d in ctx.fn._saved_dims]
        inverse = sorted(range(len(dims)), key=dims.__getitem__)
        if isinstance(block, OuterColumns) and dims == [1, 0]:
            return block.transpose()
        if isinstance(block, SampleColumns) and dims[0] == 0:
            order = [0, 1, *(d + 1 for d in inverse[1:])]
            return SampleColumns(block.data.permute(order), block.sign)
        block = block.to_dense(ctx.out_shape)
        order = [0, *(d + 1 for d in inverse)]
        return DenseColumns(block.data.permute(order), block.sign)


class Expand(Rule):
    def pullback(self, ctx, block, pos):
        return unbroadcast(block, ctx.in_shapes[pos], ctx.out_shape)


class SumMean(Rule):
    """sum / mean over some dims (SumBackward1, MeanBackward1)."""

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
        if isinstance(block, SampleColumns) and 0 not in dims:
            data = block.data
            if not keep:
                for d in dims:
                    data = data.unsqueeze(d + 1)
            data = data.expand(*data.shape[:2], *shape[1:]) * factor
            return SampleColumns(data, block.sign)
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
