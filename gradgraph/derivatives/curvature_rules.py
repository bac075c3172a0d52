"""One curvature rule per autograd op, keyed by the grad_fn's class name.

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
Gauss-Newton part alone. ``RULES`` is the table; an op missing from it has
no rule, and :mod:`gradgraph.derivatives.propagate` says so by name.

Example:
    >>> "AddmmBackward0" in RULES and "TanhBackward0" in RULES
    True
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .curvature_columns import (
    Columns,
    DenseColumns,
    DiagonalColumns,
    OuterColumns,
    SampleColumns,
    written_out,
)


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
    # a ReLU whose consumers are all max pools that apply its 0/1 derivative
    # (mask_relu_input below): columns arrive masked, the pullback passes them on
    premasked: bool = False
    # a max pool over a ReLU's output: mask the columns before the scatter
    mask_relu_input: bool = False

    @property
    def op(self) -> str:
        return type(self.fn).__name__

    def flows(self, pos: int) -> bool:
        return pos < len(self.in_shapes) and self.in_shapes[pos] is not None


# -- column algebra used by the rules ------------------------------------------


def _scale(block: Columns, factor: Any, out_shape: tuple) -> Columns:
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
    if isinstance(block, OuterColumns):
        block = block.to_dense(out_shape)
    if isinstance(block, DenseColumns):
        return DenseColumns(_sum_to(block.data, 1, in_shape), block.sign)
    n = block.samples
    if len(in_shape) == len(out_shape) and in_shape[0] == n:
        return SampleColumns(_sum_to(block.data, 1, in_shape), block.sign)
    # the input is shared by all samples: each (c, n) becomes its own column
    c = block.data.shape[0]
    cols = block.data.reshape(c * n, *out_shape[1:])
    if len(in_shape) == len(out_shape):  # batch dim of size 1
        cols = _sum_to(cols, 1, in_shape[1:]).reshape(c * n, *in_shape)
    else:
        cols = _sum_to(cols, 1, in_shape)
    return DenseColumns(cols, block.sign.reshape(c * n))


def diagonal_columns(weights: torch.Tensor) -> Columns | None:
    """Signed columns of ``diag(weights)`` (per sample when there is a batch dim)."""
    if not bool(weights.ne(0).any()):
        return None
    return written_out(DiagonalColumns(weights))


def _pair(a: Columns, b: Columns) -> tuple[Columns, Columns]:
    """Columns for the symmetric cross term ``A B^T + B A^T`` on two inputs.

    With ``a_c`` at one input and ``b_c`` at the other, the columns
    ``(a_c, b_c)`` with sign ``+s/2`` and ``(a_c, -b_c)`` with ``-s/2`` give
    exactly the cross blocks and nothing on the diagonal blocks.
    """
    half = torch.cat([a.sign / 2, -a.sign / 2])
    if isinstance(a, DenseColumns | SampleColumns):
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


def _per_sample_or_dense(block: Columns, out_shape: tuple, dim: int) -> Columns:
    """``block`` in a layout an op that mixes values along ``dim`` can act on.

    Per-sample columns stay so unless ``dim`` is the sample dim (then the op
    mixes samples); outer-product columns are written out. Either way
    ``data[c]`` has the node's shape, so the op applies to ``data`` directly.
    """
    if isinstance(block, OuterColumns) or (
        isinstance(block, SampleColumns) and dim == 0
    ):
        return block.to_dense(out_shape)
    return block


# -- rules ----------------------------------------------------------------------


class Rule:
    """Base rule: a linear op with no residual; pullback by generic VJPs."""

    loss = False  # does its residual belong to the loss (for the GGN)?

    def pullback(self, ctx: OpContext, block: Columns, pos: int) -> Columns:
        if ctx.out_shape == ():  # scalar output: the Jacobian is the gradient
            block = block.to_dense(ctx.out_shape)
            direction = _call(ctx.fn, torch.ones_like(ctx.grad))[pos]
            return DenseColumns(
                block.data.reshape(-1, *[1] * direction.dim()) * direction, block.sign
            )
        block = block.to_dense(ctx.out_shape)
        cols = torch.stack([_call(ctx.fn, col)[pos] for col in block.data.unbind(0)])
        return DenseColumns(cols, block.sign)

    def residual(self, ctx: OpContext) -> dict[int, Columns]:
        return {}

    def refuses(
        self, fn: Any, flows: list[bool], coupled: Callable[[int, int], bool]
    ) -> str | None:
        """Why this node is beyond the rule (None: it is not), before any work.

        ``flows[i]``: does a parameter's gradient flow through input ``i``;
        ``coupled(i, j)``: do inputs ``i`` and ``j`` reach a common parameter.
        """
        return None


def _call(fn: Any, grad: torch.Tensor) -> tuple:
    out = fn(grad)
    return out if isinstance(out, tuple) else (out,)


class Identity(Rule):
    def pullback(self, ctx, block, pos):
        return block


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
        dims = [d % len(ctx.out_shape) for d in ctx.fn._saved_dims]
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


class AddSub(Rule):
    """a + alpha b, a - alpha b."""

    def __init__(self, sign: float):
        self.sign = sign

    def pullback(self, ctx, block, pos):
        if pos == 1:
            alpha = getattr(ctx.fn, "_saved_alpha", 1)
            block = _scale(block, self.sign * alpha, ctx.out_shape)
        return unbroadcast(block, ctx.in_shapes[pos], ctx.out_shape)


class Scale(Rule):
    """Multiplication or division by a saved number (MulBackward1, DivBackward1)."""

    def __init__(self, divide: bool):
        self.divide = divide

    def pullback(self, ctx, block, pos):
        other = ctx.fn._saved_other
        return _scale(block, 1 / other if self.divide else other, ctx.out_shape)


class Negate(Rule):
    """-x, and ``c - alpha x`` (RsubBackward1)."""

    def pullback(self, ctx, block, pos):
        return _scale(block, -getattr(ctx.fn, "_saved_alpha", 1), ctx.out_shape)


class SumMean(Rule):
    """sum / mean over some dims (SumBackward1, MeanBackward1)."""

    def __init__(self, mean: bool):
        self.mean = mean

    def pullback(self, ctx, block, pos):
        shape = ctx.in_shapes[pos]
        dims = sorted(d % len(shape) for d in ctx.fn._saved_dim) or range(len(shape))
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


class MatMul(Rule):
    """mm / addmm: ``out = beta bias + alpha mat1 @ mat2``.

    Row ``n`` of the output comes from row ``n`` of ``mat1`` only, so
    per-sample columns stay per-sample on the way to ``mat1``; on the way to
    ``mat2`` (a weight, usually) each column is an outer product, kept lazy.
    The residual is the cross term between ``mat1`` and ``mat2``, needed only
    when both depend on one parameter (a weight used twice).
    """

    def __init__(self, with_bias: bool):
        self.offset = 1 if with_bias else 0

    def _mats(self, ctx):
        fn = ctx.fn
        if self.offset:
            return fn._saved_mat1, fn._saved_mat2, fn._saved_alpha
        return fn._saved_self, fn._saved_mat2, 1

    def pullback(self, ctx, block, pos):
        if self.offset and pos == 0:
            beta = ctx.fn._saved_beta
            return unbroadcast(
                _scale(block, beta, ctx.out_shape), ctx.in_shapes[0], ctx.out_shape
            )
        mat1, mat2, alpha = self._mats(ctx)
        if isinstance(block, OuterColumns):
            block = block.to_dense(ctx.out_shape)
        if pos == self.offset:  # mat1
            data = block.data @ (mat2.T * alpha)
            return type(block)(data, block.sign)
        if isinstance(block, SampleColumns):  # mat2
            return OuterColumns((mat1 * alpha).unsqueeze(0), block.data, block.sign)
        return DenseColumns(alpha * mat1.T @ block.data, block.sign)

    def residual(self, ctx):
        i, j = self.offset, self.offset + 1
        if not (ctx.flows(i) and ctx.flows(j) and ctx.coupled(i, j)):
            return {}
        _, _, alpha = self._mats(ctx)
        rows, inner = ctx.in_shapes[i]
        g = ctx.grad * alpha
        eye = torch.eye(inner, dtype=g.dtype, device=g.device)
        sign = torch.ones(inner, rows, dtype=g.dtype, device=g.device)
        # column (k, n): e_{n,k} at mat1 and e_k (x) g[n] at mat2
        a = SampleColumns(eye.unsqueeze(1).expand(inner, rows, inner), sign)
        b = OuterColumns(eye.unsqueeze(1), g.unsqueeze(0), sign)
        a2, b2 = _pair(a, b)
        return {i: a2, j: b2}


class Multiply(Rule):
    """a * b: linear in each factor, with a cross term when both share a parameter."""

    def pullback(self, ctx, block, pos):
        other = ctx.fn._saved_other if pos == 0 else ctx.fn._saved_self
        return unbroadcast(
            _scale(block, other, ctx.out_shape), ctx.in_shapes[pos], ctx.out_shape
        )

    def residual(self, ctx):
        if not (ctx.flows(0) and ctx.flows(1) and ctx.coupled(0, 1)):
            return {}
        cols = diagonal_columns(ctx.grad.expand(ctx.out_shape))
        if cols is None:
            return {}
        a, b = _pair(cols, cols)
        return {
            0: unbroadcast(a, ctx.in_shapes[0], ctx.out_shape),
            1: unbroadcast(b, ctx.in_shapes[1], ctx.out_shape),
        }


class Divide(Rule):
    """a / b (DivBackward0): linear in ``a``; ``b`` brings curvature.

    Per element ``y = a / b`` has ``d2y/db2 = 2a / b^3`` and
    ``d2y/da db = -1 / b^2`` (``d2y/da2 = 0``), so the residual is
    ``diag(g 2a / b^3)`` at ``b`` and, when ``a`` and ``b`` share a parameter,
    the cross term ``-g / b^2`` between them.
    """

    def pullback(self, ctx, block, pos):
        fn = ctx.fn
        b = fn._saved_other
        factor = 1 / b if pos == 0 else -fn._saved_self / (b * b)
        return unbroadcast(
            _scale(block, factor, ctx.out_shape), ctx.in_shapes[pos], ctx.out_shape
        )

    def residual(self, ctx):
        if not ctx.flows(1):
            return {}
        a, b = ctx.fn._saved_self, ctx.fn._saved_other
        cross_weights = (-ctx.grad / (b * b)).expand(ctx.out_shape)
        own = diagonal_columns(-2 * a / b * cross_weights)
        cross = None
        if ctx.flows(0) and ctx.coupled(0, 1):
            cross = diagonal_columns(cross_weights)
        if cross is None:
            if own is None:
                return {}
            return {1: unbroadcast(own, ctx.in_shapes[1], ctx.out_shape)}
        at_a, at_b = _pair(cross, cross)
        if own is not None:  # b's own term: columns that are zero at a
            sign = torch.cat([at_a.sign, own.sign])
            at_a = type(own)(torch.cat([at_a.data, torch.zeros_like(own.data)]), sign)
            at_b = type(own)(torch.cat([at_b.data, own.data]), sign)
        return {
            0: unbroadcast(at_a, ctx.in_shapes[0], ctx.out_shape),
            1: unbroadcast(at_b, ctx.in_shapes[1], ctx.out_shape),
        }


class MaxAlongDim(Rule):
    """``x.max(dim)`` / ``x.min(dim)`` values: a selection, linear almost everywhere."""

    def pullback(self, ctx, block, pos):
        fn = ctx.fn
        shape = ctx.in_shapes[pos]
        dim = fn._saved_dim % len(shape)
        block = _per_sample_or_dense(block, ctx.out_shape, dim)
        data, index = block.data, fn._saved_indices
        if not fn._saved_keepdim:
            data, index = data.unsqueeze(dim + 1), index.unsqueeze(dim)
        out = data.new_zeros(data.shape[0], *shape)
        out.scatter_(dim + 1, index.unsqueeze(0).expand_as(data), data)
        return type(block)(out, block.sign)


class Elementwise(Rule):
    """``y = f(x)`` elementwise: pullback by ``f'(x)``, residual ``diag(g f''(x))``.

    ``derivatives(fn)`` returns ``(f'(x), f''(x))`` from what the node saved.
    """

    def __init__(self, derivatives: Callable[[Any], tuple[torch.Tensor, Any]]):
        self.derivatives = derivatives

    def _d(self, ctx):
        if "d" not in ctx.memo:
            ctx.memo["d"] = self.derivatives(ctx.fn)
        return ctx.memo["d"]

    def pullback(self, ctx, block, pos):
        if ctx.premasked:
            return block
        d1, _ = self._d(ctx)
        return _scale(block, d1, ctx.out_shape)

    def residual(self, ctx):
        _, d2 = self._d(ctx)
        if isinstance(d2, (int, float)) and d2 == 0:
            return {}
        weights = ctx.grad * d2
        if not bool(weights.ne(0).any()):
            return {}
        # one column per value: the propagation writes them out a slice at a time
        return {0: DiagonalColumns(weights)}


def _by_autograd(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor):
    """``f'(x), f''(x)`` of an elementwise ``f`` by double backward."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        (d1,) = torch.autograd.grad(f(x).sum(), x, create_graph=True)
        (d2,) = torch.autograd.grad(d1.sum(), x, allow_unused=True)
    return d1.detach(), torch.zeros_like(x) if d2 is None else d2


def _from_input(f: Callable[[Any, torch.Tensor], torch.Tensor]):
    return lambda fn: _by_autograd(lambda x: f(fn, x), fn._saved_self)


def _tanh(fn):
    y = fn._saved_result
    d1 = 1 - y * y
    return d1, -2 * y * d1


def _sigmoid(fn):
    y = fn._saved_result
    d1 = y * (1 - y)
    return d1, d1 * (1 - 2 * y)


def _exp(fn):
    y = fn._saved_result
    return y, y


def _reciprocal(fn):
    y = fn._saved_result
    return -y * y, 2 * y * y * y


def _relu(fn):
    return (fn._saved_result > 0).to(fn._saved_result.dtype), 0


_REDUCTION_NONE, _REDUCTION_MEAN = 0, 1


class PointwiseLoss(Rule):
    """mse / huber / smooth-L1 of (input, target): curvature ``diag(h(x - t))``."""

    loss = True

    def __init__(self, curvature: Callable[[Any, torch.Tensor], Any]):
        self.curvature = curvature

    def pullback(self, ctx, block, pos):
        fn = ctx.fn
        if fn._saved_reduction == _REDUCTION_NONE:
            slope = _call(fn, torch.ones_like(ctx.grad))[pos]
            return _scale(block, slope, ctx.out_shape)
        return super().pullback(ctx, block, pos)

    def residual(self, ctx):
        fn = ctx.fn
        x, t = fn._saved_self, fn._saved_target
        g = ctx.grad
        if fn._saved_reduction == _REDUCTION_MEAN:
            g = g / x.numel()
        weights = (g * self.curvature(fn, x - t)).expand(x.shape)
        cols = diagonal_columns(weights)
        out = {} if cols is None else {0: cols}
        if cols is not None and ctx.flows(1):  # target depends on a parameter too
            out[1] = _scale(cols, -1.0, tuple(x.shape))
        return out


def _mse_curvature(fn, diff):
    return 2.0


def _huber_curvature(fn, diff):
    return (diff.abs() < fn._saved_delta).to(diff.dtype)


def _smooth_l1_curvature(fn, diff):
    beta = fn._saved_beta
    return (diff.abs() < beta).to(diff.dtype) / beta


def _rows(t: torch.Tensor, dim: int) -> torch.Tensor:
    """``t`` as ``[N, R, K]``: per sample, its rows along ``dim`` (length ``K``).

    ``N`` is the batch (dim 0) when ``t`` has one and ``dim`` is not it, else 1.
    """
    n = t.shape[0] if t.dim() >= 2 and dim != 0 else 1
    return t.movedim(dim, -1).reshape(n, -1, t.shape[dim])


def _row_columns(
    factors: torch.Tensor, signs: torch.Tensor, shape: tuple, dim: int
) -> Columns:
    """Columns that each sit on one row (along ``dim``) of a ``shape`` tensor.

    ``factors[n, r, j]`` (``[N, R, J, K]``, see :func:`_rows`) is column ``j``
    of row ``r`` of sample ``n``, with sign ``signs[n, r, j]``; it is zero off
    that row.
    """
    n, r, j, k = factors.shape
    data = factors.new_zeros(r, j, n, r, k)
    rows = torch.arange(r, device=factors.device)
    data[rows, :, :, rows] = factors.permute(1, 2, 0, 3)
    moved = [s for i, s in enumerate(shape) if i != dim]
    data = data.reshape(r * j, *moved, k).movedim(-1, dim + 1)
    sign = signs.permute(1, 2, 0).reshape(r * j, n)
    if len(shape) >= 2 and dim != 0:
        return SampleColumns(data, sign)
    return DenseColumns(data, sign.reshape(-1))


class Softmax(Rule):
    """softmax along any dim: ``y = exp(x) / sum exp(x)``, per row.

    ``J = diag(y) - y y^T`` (symmetric), and ``sum_k g_k d^2 y_k / dx^2`` is
    ``diag(u) - y u^T - u y^T`` with ``u = y (g - <g, y>)``: written as the
    ``K`` diagonal columns plus ``(y - u) / sqrt 2`` (sign +1) and
    ``(y + u) / sqrt 2`` (sign -1), per row.
    """

    def pullback(self, ctx, block, pos):
        y = ctx.fn._saved_result
        dim = ctx.fn._saved_dim % y.dim()
        block = _per_sample_or_dense(block, ctx.out_shape, dim)
        data = block.data
        data = y * (data - (data * y).sum(dim + 1, keepdim=True))
        return type(block)(data, block.sign)

    def residual(self, ctx):
        y = ctx.fn._saved_result
        dim = ctx.fn._saved_dim % y.dim()
        g = ctx.grad
        u = y * (g - (g * y).sum(dim, keepdim=True))
        ys, us = _rows(y, dim), _rows(u, dim)
        half = 0.5**0.5
        factors = torch.cat(
            [
                torch.diag_embed(us.abs().sqrt()),
                (half * (ys - us)).unsqueeze(2),
                (half * (ys + us)).unsqueeze(2),
            ],
            dim=2,
        )
        ones = torch.ones_like(us[..., :1])
        signs = torch.cat([us.sign(), ones, -ones], dim=2)
        return {0: _row_columns(factors, signs, tuple(y.shape), dim)}


class LogSoftmax(Rule):
    """log_softmax along any dim: ``y = x - logsumexp(x)``, per row.

    Each output's Hessian is ``-(diag(p) - p p^T)``, so the residual is
    ``-(sum_k g_k) (diag(p) - p p^T)`` per row: with the NLL above it, the
    cross-entropy Hessian. ``diag(sqrt p) - p sqrt(p)^T`` is a square root.
    """

    loss = True

    def _p(self, ctx):
        p = ctx.fn._saved_result.exp()
        return p, ctx.fn._saved_dim % p.dim()

    def pullback(self, ctx, block, pos):
        p, dim = self._p(ctx)
        block = _per_sample_or_dense(block, ctx.out_shape, dim)
        data = block.data - p * block.data.sum(dim + 1, keepdim=True)
        return type(block)(data, block.sign)

    def residual(self, ctx):
        p, dim = self._p(ctx)
        ps = _rows(p, dim)
        s = _rows(-ctx.grad.sum(dim, keepdim=True), dim)  # [N, R, 1]
        eye = torch.eye(ps.shape[-1], dtype=p.dtype, device=p.device)
        # column c of a row: sqrt|s| sqrt(p_c) (e_c - p)
        factors = ps.sqrt().unsqueeze(-1) * (eye - ps.unsqueeze(-2))
        factors = factors * s.abs().sqrt().unsqueeze(-1)
        signs = s.sign().expand_as(ps)
        return {0: _row_columns(factors, signs, tuple(p.shape), dim)}


RULES: dict[str, Rule] = {
    # linear, no residual
    "TBackward0": Transpose(),
    "PermuteBackward0": Permute(),
    "ViewBackward0": Reshape(),
    "ReshapeAliasBackward0": Reshape(),
    "UnsafeViewBackward0": Reshape(),
    "SqueezeBackward0": Reshape(),
    "SqueezeBackward1": Reshape(),
    "UnsqueezeBackward0": Reshape(),
    "CloneBackward0": Identity(),
    "AliasBackward0": Identity(),
    "BackwardHookFunctionBackward": Identity(),
    "ExpandBackward0": Expand(),
    "AddBackward0": AddSub(1.0),
    "SubBackward0": AddSub(-1.0),
    "AddBackward1": Identity(),
    "SubBackward1": Identity(),
    "NegBackward0": Negate(),
    "RsubBackward1": Negate(),
    "MulBackward1": Scale(divide=False),
    "DivBackward1": Scale(divide=True),
    "SumBackward0": Rule(),
    "MeanBackward0": Rule(),
    "SumBackward1": SumMean(mean=False),
    "MeanBackward1": SumMean(mean=True),
    "NllLossBackward0": Rule(),
    # products
    "MmBackward0": MatMul(with_bias=False),
    "AddmmBackward0": MatMul(with_bias=True),
    "MulBackward0": Multiply(),
    "DivBackward0": Divide(),
    "MaxBackward0": MaxAlongDim(),
    "MinBackward0": MaxAlongDim(),
    # activations
    "TanhBackward0": Elementwise(_tanh),
    "SigmoidBackward0": Elementwise(_sigmoid),
    "ReluBackward0": Elementwise(_relu),
    "ExpBackward0": Elementwise(_exp),
    "ReciprocalBackward0": Elementwise(_reciprocal),
    "GeluBackward0": Elementwise(
        _from_input(lambda fn, x: F.gelu(x, approximate=fn._saved_approximate))
    ),
    "SiluBackward0": Elementwise(_from_input(lambda fn, x: F.silu(x))),
    "SoftplusBackward0": Elementwise(
        _from_input(lambda fn, x: F.softplus(x, fn._saved_beta, fn._saved_threshold))
    ),
    "LeakyReluBackward0": Elementwise(
        _from_input(lambda fn, x: F.leaky_relu(x, fn._saved_negative_slope))
    ),
    "LogBackward0": Elementwise(_from_input(lambda fn, x: torch.log(x))),
    "SinBackward0": Elementwise(_from_input(lambda fn, x: torch.sin(x))),
    "CosBackward0": Elementwise(_from_input(lambda fn, x: torch.cos(x))),
    "PowBackward0": Elementwise(_from_input(lambda fn, x: x**fn._saved_exponent)),
    # losses
    "MseLossBackward0": PointwiseLoss(_mse_curvature),
    "HuberLossBackward0": PointwiseLoss(_huber_curvature),
    "SmoothL1LossBackward0": PointwiseLoss(_smooth_l1_curvature),
    "LogSoftmaxBackward0": LogSoftmax(),
    "SoftmaxBackward0": Softmax(),
}
