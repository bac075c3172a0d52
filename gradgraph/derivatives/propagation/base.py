"""What every curvature rule builds on: the Rule interface, OpContext, column algebra.

A rule does two things at a node ``y = f(x_1, ..., x_k)`` of the graph:

* ``pullback``: carry Hessian factor columns from ``y`` back to one input
  ``x_i`` (a batch of vector-Jacobian products ``J_i^T v``).
* ``residual``: the op's own second-order term ``sum_j g_j d^2 y_j / dx dx``
  (``g = dL/dy``), written as new signed factor columns at the inputs. For an
  activation that is ``diag(g * f''(x))``; for a loss it is the loss Hessian;
  for a product of two inputs that both depend on the same parameter it is the
  cross term between them. Linear ops have none.

Together these give the exact Hessian (Hessian backpropagation, as in Dangel,
Kunstner and Hennig, ICLR 2020, with the residual terms kept), not the
Gauss-Newton part alone. Rules live in one module per family under
:mod:`.rules` and register themselves (:mod:`.registry`); the helpers here are
the column algebra they share.

Example:
    >>> import torch
    >>> cols = DenseColumns(torch.ones(1, 2, 3), torch.ones(1))
    >>> unbroadcast(cols, (1, 3), (2, 3)).data
    tensor([[[2., 2., 2.]]])
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .columns import (
    Columns,
    DenseColumns,
    DiagonalColumns,
    GroupColumns,
    OuterColumns,
    ProductColumns,
    RowColumns,
    SampleColumns,
    TokenColumns,
    _DataColumns,
    one_per_column,
)

__all__ = [
    "Fold",
    "Identity",
    "OpContext",
    "Rule",
    "UnsupportedOpError",
    "call_backward",
    "cast_columns",
    "cross_pair",
    "diagonal_columns",
    "input_dtype",
    "per_sample_or_dense",
    "pull",
    "row_columns",
    "rows_along",
    "saved_dim",
    "scale",
    "unbroadcast",
]


class UnsupportedOpError(ValueError):
    """An op between the loss and the parameters has no curvature rule."""


@dataclass
class OpContext:
    """What a rule sees of one node: its grad_fn, dL/d(output), shapes."""

    fn: Any
    grad: torch.Tensor
    out_shape: tuple[int, ...]
    in_shapes: list[tuple[int, ...] | None]  # None: no gradient flows there
    coupled: Callable[[int, int], bool]  # do inputs i and j share a parameter?
    memo: dict  # per-node scratch space, so a rule computes a thing once
    # fusion (see Rule.positive_mask / Rule.takes_input_mask): a node whose
    # derivative is the 0/1 mask ``output > 0`` and whose consumers all apply
    # that mask themselves: columns arrive masked, the pullback passes them on
    premasked: bool = False
    # a consumer of such a node: apply the mask ``input > 0`` to the columns
    mask_input: bool = False
    # during a pullback: every column of the block's source is in the block
    # (none elsewhere in the graph), so the rule may renumber its columns
    whole: bool = False

    @property
    def op(self) -> str:
        return type(self.fn).__name__

    def flows(self, pos: int) -> bool:
        return pos < len(self.in_shapes) and self.in_shapes[pos] is not None


# -- column algebra shared by the rules ----------------------------------------


def saved_dim(dim: int, rank: int) -> int:
    """A dim a node saved, as ``0 .. rank - 1``.

    torch hands a saved negative dim back as an unsigned 64-bit number
    (``-1`` as ``2**64 - 1``), which ``% rank`` alone gets wrong for most ranks.

    Example:
        >>> saved_dim(2**64 - 1, 3), saved_dim(1, 3)
        (2, 1)
    """
    if dim >= 1 << 63:
        dim -= 1 << 64
    return dim % max(rank, 1)


def scale(block: Columns, factor: Any, out_shape: tuple) -> Columns:
    """Columns times a tensor (or number) that broadcasts against the node value."""
    if isinstance(factor, int | float) and factor == 1:
        return block  # no copy
    if isinstance(block, OuterColumns):
        if isinstance(factor, torch.Tensor) and factor.numel() != 1:
            block = block.to_dense(out_shape)
        else:
            return OuterColumns(
                block.left * factor, block.right, block.sign, block.transposed
            )
    return type(block)(block.data * factor, block.sign)


def _sum_to(data: torch.Tensor, lead: int, shape: tuple) -> torch.Tensor:
    """Sum ``data`` (``lead`` column dims, then a value) down to ``shape``."""
    extra = data.dim() - lead - len(shape)
    if extra > 0:
        data = data.sum(dim=tuple(range(lead, lead + extra)))
    dims = tuple(
        lead + i
        for i, (s, d) in enumerate(zip(shape, data.shape[lead:], strict=True))
        if s == 1 and d != 1
    )
    if dims:
        data = data.sum(dim=dims, keepdim=True)
    return data.reshape(*data.shape[:lead], *shape)


def unbroadcast(block: Columns, in_shape: tuple, out_shape: tuple) -> Columns:
    """Pull columns back through a broadcast from ``in_shape`` to ``out_shape``."""
    if tuple(in_shape) == tuple(out_shape):
        return block
    if isinstance(block, GroupColumns):
        if len(in_shape) < len(out_shape) or in_shape[0] == 1:  # a bias
            cols = one_per_column(block.data.sum(2), block.sign)
            data = _sum_to(cols.data, 1, tuple(in_shape[-len(out_shape) + 1 :]))
            return DenseColumns(data.reshape(-1, *in_shape), cols.sign)
        block = block.to_dense(out_shape)
    if isinstance(block, TokenColumns):
        same_rank = len(in_shape) == len(out_shape)
        if same_rank and tuple(in_shape[:2]) == tuple(out_shape[:2]):
            return TokenColumns(_sum_to(block.data, 1, in_shape), block.sign)
        if len(in_shape) <= len(out_shape) - 2 or (
            same_rank and in_shape[0] == in_shape[1] == 1
        ):  # shared by every token (a bias): each (b, l, c) its own column
            cols = one_per_column(block.data, block.sign)
            trailing = tuple(in_shape[len(in_shape) - len(out_shape) + 2 :])
            data = _sum_to(cols.data, 1, trailing)
            return DenseColumns(data.reshape(-1, *in_shape), cols.sign)
        block = block.per_sample()
    if isinstance(block, OuterColumns):
        block = block.to_dense(out_shape)
    if isinstance(block, DenseColumns):
        return DenseColumns(_sum_to(block.data, 1, in_shape), block.sign)
    n = block.samples
    if len(in_shape) == len(out_shape) and in_shape[0] == n:
        return SampleColumns(_sum_to(block.data, 1, in_shape), block.sign)
    # the input is shared by all samples: each (n, c) becomes its own column
    flat = one_per_column(block.data, block.sign)
    cols = flat.data
    if len(in_shape) == len(out_shape):  # batch dim of size 1
        cols = _sum_to(cols, 1, in_shape[1:]).reshape(-1, *in_shape)
    else:
        cols = _sum_to(cols, 1, in_shape)
    return DenseColumns(cols, flat.sign)


def diagonal_columns(weights: torch.Tensor) -> Columns | None:
    """Signed columns of ``diag(weights)`` (per sample when there is a batch dim)."""
    if not bool(weights.ne(0).any()):
        return None
    return DiagonalColumns(weights).written_out()


def cross_pair(a: Columns, b: Columns) -> tuple[Columns, Columns]:
    """Columns for the symmetric cross term ``A B^T + B A^T`` on two inputs.

    With ``a_c`` at one input and ``b_c`` at the other, the columns
    ``(a_c, b_c)`` with sign ``+s/2`` and ``(a_c, -b_c)`` with ``-s/2`` give
    exactly the cross blocks and nothing on the diagonal blocks.
    """
    half = torch.cat([a.sign / 2, -a.sign / 2])
    if isinstance(a, _DataColumns):
        a2 = type(a)(torch.cat([a.data, a.data]), half)
    if isinstance(b, OuterColumns):
        c = a.sign.shape[0]
        left = b.left.expand(c, *b.left.shape[1:])
        right = b.right.expand(c, *b.right.shape[1:])
        b2 = OuterColumns(
            torch.cat([left, left]), torch.cat([right, -right]), half, b.transposed
        )
    else:
        b2 = type(b)(torch.cat([b.data, -b.data]), half)
    return a2, b2


def per_sample_or_dense(block: Columns, out_shape: tuple, dim: int) -> Columns:
    """``block`` in a layout an op that mixes values along ``dim`` can act on.

    Per-sample columns stay so unless ``dim`` is the sample dim (then the op
    mixes samples), per-token ones unless ``dim`` is a token dim (0 or 1);
    outer-product columns are written out. Either way ``data[c]`` has the
    node's shape, so the op applies to ``data`` directly.
    """
    if isinstance(block, TokenColumns):
        if dim >= 2:
            return block
        block = block.per_sample()
    if isinstance(block, OuterColumns) or (
        isinstance(block, SampleColumns) and dim == 0
    ):
        return block.to_dense(out_shape)
    return block


def rows_along(t: torch.Tensor, dim: int) -> torch.Tensor:
    """``t`` as ``[N, R, K]``: per sample, its rows along ``dim`` (length ``K``).

    ``N`` is the batch (dim 0) when ``t`` has one and ``dim`` is not it, else 1.
    """
    n = t.shape[0] if t.dim() >= 2 and dim != 0 else 1
    return t.movedim(dim, -1).reshape(n, -1, t.shape[dim])


def row_columns(
    factors: torch.Tensor, signs: torch.Tensor, shape: tuple, dim: int
) -> RowColumns:
    """Columns that each sit on one row (along ``dim``) of a ``shape`` tensor.

    ``factors[n, r, j]`` (``[N, R, J, K]``, see :func:`rows_along`) is column
    ``j`` of row ``r`` of sample ``n``, with sign ``signs[n, r, j]``; it is
    zero off that row. Lazy: written out a slice at a time; per token
    (:class:`~.columns.TokenColumns`, column ``j`` of every token) when the
    rows are the tokens of a ``[B, L, K]`` value.
    """
    if len(shape) == 3 and dim == 2:
        return TokenColumns(factors.permute(2, 0, 1, 3), signs.permute(2, 0, 1))
    k = factors.shape[-1]
    moved = [s for i, s in enumerate(shape) if i != dim]

    def join(data: torch.Tensor) -> torch.Tensor:
        return data.reshape(data.shape[0], *moved, k).movedim(-1, dim + 1)

    return RowColumns(factors, signs, join, len(shape) >= 2 and dim != 0)


# -- the rule interface ----------------------------------------------------------


@dataclass
class Fold:
    """What :meth:`Rule.fold` makes of the columns that end at a node.

    ``columns`` (input -> block): one new source's columns, to be carried on;
    ``partners`` ((input, block) pairs): that source's partners
    (:class:`~.columns.Paired`), pulled back to the parameters and paired
    there with its columns; ``rest`` (input -> block): a second new source,
    the part of the old columns that stays on the other inputs.
    ``with_residual``: the node's own second-order term is in them too.
    """

    columns: dict[int, Columns]
    partners: list[tuple[int, Columns]]
    rest: dict[int, Columns]
    with_residual: bool


class Rule:
    """Base rule: a linear op with no residual; pullback by generic VJPs."""

    loss = False  # does its residual belong to the loss (for the GGN)?
    # fusion: the op's derivative is the 0/1 mask ``output > 0`` (ReLU), so a
    # consumer that takes the mask (takes_input_mask) can apply it instead
    positive_mask = False
    # fusion: the op can apply the mask ``input > 0`` to its (smaller)
    # columns before its own pullback (max pool: exact, a pooled column lands
    # on window maxima only, where the mask is the one the op below applies)
    takes_input_mask = False
    # the rule acts on per-token columns (TokenColumns) as they are; others
    # get them per sample (see :meth:`accept`)
    takes_tokens = False
    # the rule acts on per-sample columns of a [B * L, ...] view (GroupColumns)
    takes_groups = False
    # the rule acts on lazy per-sample matrix products (ProductColumns)
    takes_products = False

    def accept(self, ctx: OpContext, block: Columns) -> Columns:
        """``block`` in a layout this rule acts on at this node: per-token
        columns go per sample and lazy products are written out, unless the
        rule takes them (grouped columns: see :func:`pull`)."""
        if isinstance(block, TokenColumns) and not self.takes_tokens:
            return block.per_sample()
        if isinstance(block, ProductColumns) and not self.takes_products:
            return block.written_out()
        return block

    def pullback(self, ctx: OpContext, block: Columns, pos: int) -> Columns:
        if ctx.out_shape == ():  # scalar output: the Jacobian is the gradient
            block = block.to_dense(ctx.out_shape)
            direction = call_backward(ctx.fn, torch.ones_like(ctx.grad))[pos]
            return DenseColumns(
                block.data.reshape(-1, *[1] * direction.dim()) * direction, block.sign
            )
        block = block.to_dense(ctx.out_shape)
        cols = torch.stack(
            [call_backward(ctx.fn, col)[pos] for col in block.data.unbind(0)]
        )
        return DenseColumns(cols, block.sign)

    def residual(self, ctx: OpContext) -> dict[int, Columns]:
        return {}

    def fold(
        self, ctx: OpContext, blocks: list[Columns], with_residual: bool
    ) -> Fold | None:
        """The columns of sources that end here (``blocks``: none of their
        columns are elsewhere), and the residual when ``with_residual``, in
        fewer columns (see :class:`Fold`); None: pull them back one by one."""
        return None

    def mixes_samples(self, fn: Any) -> bool:
        """Does the node write columns out densely, one per (column, sample)?

        True for ops that couple the samples of a batch (BatchNorm in training
        mode): columns at and below such a node are ``N`` times larger, which
        the engine's memory plan counts.
        """
        return False

    def refuses(
        self, fn: Any, flows: list[bool], coupled: Callable[[int, int], bool]
    ) -> str | None:
        """Why this node is beyond the rule (None: it is not), before any work.

        ``flows[i]``: does a parameter's gradient flow through input ``i``;
        ``coupled(i, j)``: do inputs ``i`` and ``j`` reach a common parameter.
        """
        return None


def pull(rule: Rule, ctx: OpContext, block: Columns, pos: int) -> Columns:
    """``rule``'s pullback of ``block`` to input ``pos``.

    Grouped columns (:class:`~.columns.GroupColumns`) reach a rule that does
    not take them one row at a time, and are added back up per column after.
    """
    if isinstance(block, GroupColumns) and not rule.takes_groups:
        if "rows" not in ctx.memo or ctx.memo["rows"][0] is not block:
            ctx.memo["rows"] = (block, block.as_rows())
        pulled = rule.pullback(ctx, ctx.memo["rows"][1], pos)
        return block.regroup(pulled, tuple(ctx.in_shapes[pos]))
    return rule.pullback(ctx, block, pos)


def call_backward(fn: Any, *grads: torch.Tensor | None) -> tuple:
    """``fn``'s backward applied to ``grads`` (one per output), always as a tuple.

    Nodes of Python ``autograd.Function`` s (hook nodes among them) are not
    callable; their ``apply`` runs the Function's backward. Hooks registered
    on a node are not run either way.
    """
    out = fn(*grads) if callable(fn) else fn.apply(*grads)
    return out if isinstance(out, tuple) else (out,)


def input_dtype(fn: Any, out_nr: int) -> tuple[torch.dtype, torch.device]:
    """The dtype and device autograd casts a gradient to before ``fn`` reads it.

    ``out_nr`` is the output of ``fn`` the gradient is for; a leaf
    (AccumulateGrad) takes its variable's.
    """
    if not hasattr(fn, "_input_metadata"):
        return fn.variable.dtype, fn.variable.device
    meta = fn._input_metadata[out_nr]
    return meta.dtype, meta.device


def cast_columns(
    block: Columns, shape: tuple, dtype: torch.dtype, device: torch.device
) -> Columns:
    """``block`` (at a node of ``shape``) with its columns cast to ``dtype``/``device``.

    What autograd does to a gradient that crosses a dtype boundary (a cast, or
    an op that promotes a float32 input to float64), done to the columns.
    """
    if not isinstance(block, DenseColumns | SampleColumns | TokenColumns):
        block = block.to_dense(shape)
    cast = {"dtype": dtype, "device": device}
    return type(block)(block.data.to(**cast), block.sign.to(**cast))


class Identity(Rule):
    """An op that passes its input on unchanged (clone, alias, x + number)."""

    takes_tokens = True

    def pullback(self, ctx, block, pos):
        return block
