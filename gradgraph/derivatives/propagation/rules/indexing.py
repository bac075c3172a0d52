"""Curvature rules for the ops that move values around: indexing and shape.

``cat``, ``stack``, ``select``, ``slice``, ``index``, ``gather``,
``transpose``, ``embedding``, ``where``, ``masked_fill``, ``flip`` ... are
linear in the inputs a gradient flows through, so they have no second-order
term, and their pullback is their own backward: :class:`ByOwnBackward` runs
the node's backward on a whole batch of columns at once (``torch.func.vmap``
over the grad_fn). Per-sample columns stay per-sample when the op keeps the
batch dim (dim 0) apart; else they are written out. An embedding's weight
gets its columns on the rows the ids pick (:class:`Embedding`).

Ops with several outputs that tile their input (``split``, ``chunk``,
``unbind``) are handled by :class:`Tiling`: the columns a consumer sends
through one output are placed into the input's shape on arrival
(``embed``), so all outputs' columns add up in one block there.

Example:
    >>> import torch
    >>> from gradgraph.derivatives import propagated_hessian_diagonal
    >>> w = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    >>> a, b = w.split([1, 2])
    >>> propagated_hessian_diagonal((torch.cat([b, a]) ** 3).sum(), w).round()  # 6 w
    tensor([ 6., 12., 18.])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.func import vmap

from ..base import OpContext, Rule, call_backward, saved_dim, unbroadcast
from ..columns import (
    Columns,
    GroupColumns,
    IndexedRowColumns,
    Placed,
    SampleColumns,
    TokenColumns,
)
from ..registry import register

__all__ = ["ByOwnBackward", "Embedding", "Tiling"]


def _dim(fn: Any, rank: int, name: str = "_saved_dim") -> int:
    return saved_dim(getattr(fn, name), rank)


def _along_dim(fn: Any, in_shape: tuple, out_shape: tuple) -> int:
    """The op's ``dim`` (``stack`` counts it in its output)."""
    rank = len(out_shape) if type(fn).__name__ == "StackBackward0" else len(in_shape)
    return _dim(fn, rank)


def _transposed_dims(fn, in_shape, out_shape) -> int:
    rank = len(in_shape)
    return min(saved_dim(fn._saved_dim0, rank), saved_dim(fn._saved_dim1, rank))


def _indexed_dims(fn, in_shape, out_shape) -> int:
    """``x[:, i, j]``: the first indexed dim, with the index tensors side by side
    (0 when they are not: the indices then move the values anywhere)."""
    where = [k for k, i in enumerate(fn._saved_indices) if i is not None]
    together = bool(where) and where == list(range(where[0], where[-1] + 1))
    return where[0] if together else 0


def _elementwise(fn, in_shape, out_shape) -> int:
    return len(in_shape)


def _flipped_dims(fn, in_shape, out_shape) -> int:
    return min(saved_dim(d, len(in_shape)) for d in fn._saved_dims)


def _last_two(fn, in_shape, out_shape) -> int:
    return len(in_shape) - 2  # tril / triu act on the last two dims


def _everywhere(fn, in_shape, out_shape) -> int:
    return 0


FirstDim = Callable[[Any, tuple, tuple], int]


class ByOwnBackward(Rule):
    """A linear op: columns go back through the node's own backward, all at once.

    ``first_dim(fn, in_shape, out_shape)`` is the lowest dim the op moves
    values along: per-sample columns stay per-sample when it is not the
    batch dim (dim 0), per-token ones when it is neither token dim (0, 1).
    A slice of the tokens (``logits[:, :-1]``) keeps per-token columns too
    when they are all of their source (they are renumbered).
    """

    takes_tokens = True

    def __init__(self, first_dim: FirstDim):
        self.first_dim = first_dim

    def refuses(self, fn, flows, coupled):
        if getattr(fn, "_saved_sparse", False) or getattr(fn, "_saved_sparse_grad", 0):
            return f"{type(fn).__name__} (sparse gradients; use sparse=False)"
        return None

    def _first(self, ctx: OpContext, lead: int) -> bool:
        """Do all inputs keep their first ``lead`` dims, untouched by the op?"""
        shapes = [s for s in ctx.in_shapes if s is not None]
        return (
            len(ctx.out_shape) >= lead
            and all(
                len(s) >= lead  # select / stack change the rank past ``lead``
                and tuple(s[:lead]) == tuple(ctx.out_shape[:lead])
                and self.first_dim(ctx.fn, s, ctx.out_shape) >= lead
                for s in shapes
            )
        )

    def _renumbers_tokens(self, ctx: OpContext) -> bool:
        """A step-1 slice along dim 1 of a source whose columns are all here."""
        fn = ctx.fn
        return (
            ctx.whole
            and type(fn).__name__ == "SliceBackward0"
            and _dim(fn, len(ctx.out_shape)) == 1
            and fn._saved_step == 1
        )

    def _layout(self, ctx: OpContext, block: Columns) -> Columns:
        if isinstance(block, TokenColumns):
            if self._first(ctx, 2) or self._renumbers_tokens(ctx):
                return block
            block = block.per_sample()
        if isinstance(block, SampleColumns):
            if self._first(ctx, 1) and ctx.out_shape[0] == block.samples:
                return block
        return block.to_dense(ctx.out_shape)

    def _all_inputs(self, ctx: OpContext, data: torch.Tensor) -> tuple:
        fn = ctx.fn
        extra = [None] * (len(fn._input_metadata) - 1)

        def back(col):
            out = fn(col, *extra)
            out = out if isinstance(out, tuple) else (out,)
            # inputs no gradient flows to come back as None: zeros of any shape
            return tuple(o if o is not None else col.new_zeros(()) for o in out)

        return vmap(back)(data)

    def _moved_sign(self, ctx: OpContext, block: TokenColumns) -> torch.Tensor:
        """The signs of renumbered per-token columns, moved as their tokens are."""
        c, b, ell = block.sign.shape
        start = ctx.fn._saved_start
        a = 0 if start is None else saved_dim(start, ctx.in_shapes[0][1])
        sign = block.sign.new_zeros(c, b, ctx.in_shapes[0][1])
        sign[:, :, a : a + ell] = block.sign
        return sign

    def pullback(self, ctx, block, pos):
        memo = ctx.memo.get("pullback")
        if memo is None or memo[0] is not block:  # one backward for all inputs
            laid = self._layout(ctx, block)
            memo = (block, laid, self._all_inputs(ctx, laid.data))
            ctx.memo["pullback"] = memo
        _, laid, grads = memo
        data = grads[pos]
        sign = laid.sign
        if isinstance(laid, TokenColumns) and data.shape[1:3] != laid.data.shape[1:3]:
            sign = self._moved_sign(ctx, laid)  # a slice of the tokens
        out = type(laid)(data, sign)
        grad_shape = tuple(data.shape[1:])
        if grad_shape != ctx.in_shapes[pos]:  # the engine's sum for broadcasts
            out = unbroadcast(out, ctx.in_shapes[pos], grad_shape)
        return out


class Tiling(Rule):
    """``split`` / ``chunk`` / ``unbind``: outputs that tile the input.

    The node's columns live in the input's shape: a consumer's columns for
    output ``k`` are put in place on arrival (:meth:`embed`), and the
    pullback passes the sum on unchanged.
    """

    several_outputs = True
    takes_tokens = True  # the pullback passes any layout on

    def __init__(self, unbind: bool):
        self.unbind = unbind

    def _spans(self, fn: Any, size: int) -> list[tuple[int, int]]:
        if self.unbind:
            return [(k, k + 1) for k in range(size)]
        if hasattr(fn, "_saved_split_sizes"):
            sizes = list(fn._saved_split_sizes)
        else:
            step = fn._saved_split_size
            sizes = [min(step, size - a) for a in range(0, size, step)]
        starts = [sum(sizes[:k]) for k in range(len(sizes))]
        return [(a, a + s) for a, s in zip(starts, sizes, strict=True)]

    def embed(self, ctx: OpContext, block: Columns, out_nr: int) -> Placed:
        """Output ``out_nr``'s columns as a slice of the input (see :class:`Placed`):
        per token past the token dims, per sample past the batch dim, else
        written out."""
        shape = ctx.out_shape
        dim = _dim(ctx.fn, len(shape))
        a, b = self._spans(ctx.fn, shape[dim])[out_nr]
        placed = Placed(block, dim, a, b, self.unbind)
        if isinstance(block, TokenColumns) and dim < 2:  # tokens split apart
            block = block.per_sample()
        if isinstance(block, TokenColumns):
            return placed  # data[c] has the slice's shape, token dims first
        if not isinstance(block, SampleColumns) or dim == 0:
            block = block.to_dense(placed.shape_in(shape))
        placed.block = block
        return placed

    def pullback(self, ctx, block, pos):
        return block


class Embedding(ByOwnBackward):
    """``nn.Embedding``: the weight's columns are the rows the ids pick.

    A column at the output (``[*ids.shape, D]``) pulls back to the rows its
    ids name, so the weight gets :class:`~.columns.IndexedRowColumns`, per
    sample (per token: one position each) as the columns arrive, never
    ``V`` rows wide (unless a sample has more positions than ``V``).
    Positions at ``padding_idx`` give nothing, as in torch's
    backward. ``scale_grad_by_freq`` is refused: its backward is not the
    loss's gradient (a second-order blocker, see :mod:`gradgraph.blockers`).
    """

    takes_groups = True

    def refuses(self, fn, flows, coupled):
        if fn._saved_scale_grad_by_freq:
            return f"{type(fn).__name__} (scale_grad_by_freq)"
        return super().refuses(fn, flows, coupled)

    def pullback(self, ctx, block, pos):
        fn = ctx.fn
        ids = fn._saved_indices.long()  # int32 ids too
        data, rows, sign = _by_sample(block, ids, ctx.out_shape)
        pad = fn._saved_padding_idx  # none: -1, saved as 2**64 - 1
        if pad < 1 << 63 and bool((rows == pad).any()):
            data = data * (rows != pad)[..., None]
        block = IndexedRowColumns(data, rows, sign, ctx.in_shapes[pos])
        # more positions than rows (dense columns over a large batch): smaller
        # written out
        return block.written_out() if rows.shape[1] > block.shape[0] else block


def _by_sample(block: Columns, ids: torch.Tensor, out_shape: tuple) -> tuple:
    """``block`` at an embedding's output as ``(data [C, N, P, D], ids [N, P],
    sign [C, N])``: column ``(c, n)`` is ``data[c, n]`` at the positions
    ``ids[n]`` (per token, per sample, or ``N`` 1 for dense columns)."""
    width = out_shape[-1]
    if isinstance(block, TokenColumns):  # column (b, l, c): sample b * L + l
        c, b, ell = block.sign.shape
        rows = ids.reshape(b * ell, -1)
        return block.data.reshape(c, b * ell, -1, width), rows, block.sign.flatten(1)
    if isinstance(block, GroupColumns | SampleColumns) and ids.dim() >= 1:
        c, n = block.sign.shape
        owned = block.data.shape[2] if isinstance(block, GroupColumns) else 1
        if ids.shape[0] == n * owned:  # a sample's rows (ids) along dim 0
            rows = ids.reshape(n, -1)
            return block.data.reshape(c, n, -1, width), rows, block.sign
    dense = block.to_dense(out_shape)
    c = dense.sign.shape[0]
    return dense.data.reshape(c, 1, -1, width), ids.reshape(1, -1), dense.sign[:, None]


class _EmbeddingBag(ByOwnBackward):
    """``nn.EmbeddingBag`` (sum, mean, max): linear in its weight; per-sample
    weights that share a parameter with it (their cross term) are refused."""

    def refuses(self, fn, flows, coupled):
        if len(flows) > 1 and flows[0] and flows[1] and coupled(0, 1):
            return f"{type(fn).__name__} (per-sample weights from the same parameter)"
        if fn._saved_scale_grad_by_freq:
            return f"{type(fn).__name__} (scale_grad_by_freq)"
        return super().refuses(fn, flows, coupled)

    def _all_inputs(self, ctx, data):
        """A column at a time: torch's bag backward has no vmap batching rule."""
        extra = [None] * (len(ctx.fn._input_metadata) - 1)
        per_column = [call_backward(ctx.fn, col, *extra) for col in data.unbind(0)]
        zero = data.new_zeros(())  # an input no gradient flows to
        return tuple(
            torch.stack([zero if g is None else g for g in grads])
            for grads in zip(*per_column, strict=True)
        )


register(
    ByOwnBackward(_along_dim),
    "CatBackward0",
    "StackBackward0",
    "SelectBackward0",
    "SliceBackward0",
    "GatherBackward0",
)
register(ByOwnBackward(_indexed_dims), "IndexBackward0")
register(ByOwnBackward(_transposed_dims), "TransposeBackward0", "TransposeBackward1")
register(ByOwnBackward(_flipped_dims), "FlipBackward0")
register(ByOwnBackward(_last_two), "TrilBackward0", "TriuBackward0")
register(ByOwnBackward(_everywhere), "RepeatBackward0")
register(Embedding(_everywhere), "EmbeddingBackward0")
register(_EmbeddingBag(_everywhere), "EmbeddingBagBackward0")
register(
    ByOwnBackward(_elementwise),
    "WhereBackward0",
    "MaskedFillBackward0",
    "NativeDropoutBackward0",
)
register(
    Tiling(unbind=False),
    "SplitBackward0",
    "SplitWithSizesBackward0",
    "UnsafeSplitBackward0",
    "UnsafeSplitWithSizesBackward0",
)
register(Tiling(unbind=True), "UnbindBackward0")
