"""Rules for elementwise ops: sums, products, quotients, activations, softmax.

``a + b``, ``a * b`` and ``a / b`` (with their cross terms when both sides
share a parameter), scaling by numbers, and every activation ``y = f(x)``
with pullback ``f'(x)`` and second-order term ``diag(g f''(x))``; softmax
and the 2-norm (``F.normalize``) along a dim (row-wise, but built from the
same per-row algebra); GLU, ``a * sigmoid(b)`` on the two halves of a dim.

Example:
    >>> import torch
    >>> from gradgraph.derivatives import propagated_hessian_diagonal
    >>> w = torch.tensor([1.0, 2.0], requires_grad=True)
    >>> propagated_hessian_diagonal((w.exp() * 2 - 1).sum(), w)  # 2 exp(w)
    tensor([ 5.4366, 14.7781])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from ..base import (
    Identity,
    Rule,
    cross_pair,
    diagonal_columns,
    per_sample_or_dense,
    row_columns,
    rows_along,
    saved_dim,
    scale,
    unbroadcast,
)
from ..columns import DiagonalColumns
from ..registry import register


class AddSub(Rule):
    """a + alpha b, a - alpha b."""

    takes_tokens = True

    def __init__(self, sign: float):
        self.sign = sign

    def pullback(self, ctx, block, pos):
        if pos == 1:
            alpha = getattr(ctx.fn, "_saved_alpha", 1)
            block = scale(block, self.sign * alpha, ctx.out_shape)
        return unbroadcast(block, ctx.in_shapes[pos], ctx.out_shape)


class Scale(Rule):
    """Multiplication or division by a saved number (MulBackward1, DivBackward1)."""

    takes_tokens = True

    def __init__(self, divide: bool):
        self.divide = divide

    def pullback(self, ctx, block, pos):
        other = ctx.fn._saved_other
        return scale(block, 1 / other if self.divide else other, ctx.out_shape)


class Negate(Rule):
    """-x, and ``c - alpha x`` (RsubBackward1)."""

    takes_tokens = True

    def pullback(self, ctx, block, pos):
        return scale(block, -getattr(ctx.fn, "_saved_alpha", 1), ctx.out_shape)


class Multiply(Rule):
    """a * b: linear in each factor, with a cross term when both share a parameter."""

    takes_tokens = True

    def pullback(self, ctx, block, pos):
        other = ctx.fn._saved_other if pos == 0 else ctx.fn._saved_self
        return unbroadcast(
            scale(block, other, ctx.out_shape), ctx.in_shapes[pos], ctx.out_shape
        )

    def residual(self, ctx):
        if not (ctx.flows(0) and ctx.flows(1) and ctx.coupled(0, 1)):
            return {}
        cols = diagonal_columns(ctx.grad.expand(ctx.out_shape))
        if cols is None:
            return {}
        a, b = cross_pair(cols, cols)
        return {
            0: unbroadcast(a, ctx.in_shapes[0], ctx.out_shape),
            1: unbroadcast(b, ctx.in_shapes[1], ctx.out_shape),
        }


def _operands(fn: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """A binary node's saved operands as ordinary tensors.

    torch saves a Python number operand (``x / math.sqrt(d)``) as a "wrapped
    number" tensor, and arithmetic between it and another number (``1 / b``)
    then runs in the default dtype: float32 digits in a float64 Hessian. A
    copy is an ordinary tensor of its own dtype. (None: not saved, not needed.)
    """
    a, b = fn._saved_self, fn._saved_other
    return (None if a is None else a.clone()), (None if b is None else b.clone())


class Divide(Rule):
    """a / b (DivBackward0): linear in ``a``; ``b`` brings curvature.

    Per element ``y = a / b`` has ``d2y/db2 = 2a / b^3`` and
    ``d2y/da db = -1 / b^2`` (``d2y/da2 = 0``), so the residual is
    ``diag(g 2a / b^3)`` at ``b`` and, when ``a`` and ``b`` share a parameter,
    the cross term ``-g / b^2`` between them.
    """

    takes_tokens = True

    def pullback(self, ctx, block, pos):
        a, b = _operands(ctx.fn)
        factor = 1 / b if pos == 0 else -a / (b * b)
        return unbroadcast(
            scale(block, factor, ctx.out_shape), ctx.in_shapes[pos], ctx.out_shape
        )

    def residual(self, ctx):
        if not ctx.flows(1):
            return {}
        a, b = _operands(ctx.fn)
        cross_weights = (-ctx.grad / (b * b)).expand(ctx.out_shape)
        own = diagonal_columns(-2 * a / b * cross_weights)
        cross = None
        if ctx.flows(0) and ctx.coupled(0, 1):
            cross = diagonal_columns(cross_weights)
        if cross is None:
            if own is None:
                return {}
            return {1: unbroadcast(own, ctx.in_shapes[1], ctx.out_shape)}
        at_a, at_b = cross_pair(cross, cross)
        if own is not None:  # b's own term: columns that are zero at a
            sign = torch.cat([at_a.sign, own.sign])
            at_a = type(own)(torch.cat([at_a.data, torch.zeros_like(own.data)]), sign)
            at_b = type(own)(torch.cat([at_b.data, own.data]), sign)
        return {
            0: unbroadcast(at_a, ctx.in_shapes[0], ctx.out_shape),
            1: unbroadcast(at_b, ctx.in_shapes[1], ctx.out_shape),
        }


class Elementwise(Rule):
    """``y = f(x)`` elementwise: pullback by ``f'(x)``, residual ``diag(g f''(x))``.

    ``derivatives(fn)`` returns ``(f'(x), f''(x))`` from what the node saved.
    """

    takes_tokens = True

    def __init__(
        self,
        derivatives: Callable[[Any], tuple[torch.Tensor, Any]],
        positive_mask: bool = False,
    ):
        self.derivatives = derivatives
        self.positive_mask = positive_mask  # f'(x) is the mask f(x) > 0

    def _d(self, ctx):
        if "d" not in ctx.memo:
            ctx.memo["d"] = self.derivatives(ctx.fn)
        return ctx.memo["d"]

    def pullback(self, ctx, block, pos):
        if ctx.premasked:
            return block
        d1, _ = self._d(ctx)
        return scale(block, d1, ctx.out_shape)

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


class Softmax(Rule):
    """softmax along any dim: ``y = exp(x) / sum exp(x)``, per row.

    ``J = diag(y) - y y^T`` (symmetric), and ``sum_k g_k d^2 y_k / dx^2`` is
    ``diag(u) - y u^T - u y^T`` with ``u = y (g - <g, y>)``: written as the
    ``K`` diagonal columns plus ``(y - u) / sqrt 2`` (sign +1) and
    ``(y + u) / sqrt 2`` (sign -1), per row.
    """

    takes_tokens = True

    def pullback(self, ctx, block, pos):
        y = ctx.fn._saved_result
        dim = saved_dim(ctx.fn._saved_dim, y.dim())
        block = per_sample_or_dense(block, ctx.out_shape, dim)
        data = block.data
        data = y * (data - (data * y).sum(dim + 1, keepdim=True))
        return type(block)(data, block.sign)

    def residual(self, ctx):
        y = ctx.fn._saved_result
        dim = saved_dim(ctx.fn._saved_dim, y.dim())
        g = ctx.grad
        u = y * (g - (g * y).sum(dim, keepdim=True))
        ys, us = rows_along(y, dim), rows_along(u, dim)
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
        return {0: row_columns(factors, signs, tuple(y.shape), dim)}


class VectorNorm(Rule):
    """The 2-norm along one dim (``linalg.vector_norm``, ``F.normalize``), per row.

    With ``u = x / y``: ``J = u^T``, and ``d^2 y / dx^2 = (I - u u^T) / y``,
    a projection: the columns ``(I - u u^T) e_i`` scaled by ``sqrt(|g| / y)``.
    Other orders, several dims or the whole tensor are refused.
    """

    def refuses(self, fn, flows, coupled):
        dim = fn._saved_dim
        if fn._saved_ord != 2 or dim is None or len(dim) != 1:
            return f"{type(fn).__name__} (not the 2-norm along one dim)"
        return None

    def _rows(self, ctx, t: torch.Tensor) -> tuple[int, torch.Tensor]:
        """The dim, and ``t`` (an output-shaped value) with that dim kept."""
        x = ctx.fn._saved_self
        dim = saved_dim(ctx.fn._saved_dim[0], x.dim())
        if not ctx.fn._saved_keepdim:
            t = t.unsqueeze(dim + t.dim() - len(ctx.out_shape))
        return dim, t

    def pullback(self, ctx, block, pos):
        x = ctx.fn._saved_self
        dim, y = self._rows(ctx, ctx.fn._saved_result)
        block = per_sample_or_dense(block, ctx.out_shape, dim)
        _, data = self._rows(ctx, block.data)
        return type(block)(data * (x / y), block.sign)

    def residual(self, ctx):
        x = ctx.fn._saved_self
        dim, y = self._rows(ctx, ctx.fn._saved_result)
        _, g = self._rows(ctx, ctx.grad)
        u = rows_along(x / y, dim)  # [N, R, K]
        weight = rows_along(g / y, dim)  # [N, R, 1]
        eye = torch.eye(u.shape[-1], dtype=u.dtype, device=u.device)
        projection = eye - u.unsqueeze(-1) * u.unsqueeze(-2)  # [N, R, K, K]
        factors = projection * weight.abs().sqrt().unsqueeze(-1)
        signs = weight.sign().expand_as(u)
        return {0: row_columns(factors, signs, tuple(x.shape), dim)}


class Glu(Rule):
    """``glu(x, dim)``: ``a sigmoid(b)`` on the two halves ``a, b`` of ``x`` on ``dim``.

    Per pair ``(a_i, b_i)`` the second-order term is the 2x2 form
    ``g [[0, s'], [s', a s'']]`` (``s = sigmoid(b)``), taken by its
    eigenvectors: two columns per pair, each on one row along ``dim``.
    """

    def _halves(self, ctx):
        x = ctx.fn._saved_self
        dim = saved_dim(ctx.fn._saved_dim, x.dim())
        a, b = x.chunk(2, dim)
        s = torch.sigmoid(b)
        return dim, a, s, s * (1 - s)

    def pullback(self, ctx, block, pos):
        dim, a, s, slope = self._halves(ctx)
        block = per_sample_or_dense(block, ctx.out_shape, dim)
        data = torch.cat([block.data * s, block.data * a * slope], dim + 1)
        return type(block)(data, block.sign)

    def residual(self, ctx):
        dim, a, s, slope = self._halves(ctx)
        cross, own = ctx.grad * slope, ctx.grad * a * slope * (1 - 2 * s)
        form = torch.stack(
            [
                torch.stack([torch.zeros_like(cross), cross], -1),
                torch.stack([cross, own], -1),
            ],
            -2,
        )  # [..., 2, 2] per pair
        values, vectors = torch.linalg.eigh(form)
        columns = vectors * values.abs().sqrt().unsqueeze(-2)  # [..., (a, b), j]
        # pair i, eigen column j: a row along ``dim`` (length 2h), at i and h + i
        factors, signs = [], []
        for j in range(2):
            at_a, at_b = (rows_along(columns[..., k, j], dim) for k in range(2))
            factors.append(torch.cat([at_a.diag_embed(), at_b.diag_embed()], -1))
            signs.append(rows_along(values[..., j].sign(), dim))
        factors = torch.cat(factors, dim=2)  # [N, R, 2h, 2h]
        shape = tuple(ctx.fn._saved_self.shape)
        return {0: row_columns(factors, torch.cat(signs, dim=2), shape, dim)}


register(AddSub(1.0), "AddBackward0")
register(AddSub(-1.0), "SubBackward0")
register(Identity(), "AddBackward1", "SubBackward1")
register(Negate(), "NegBackward0", "RsubBackward1")
register(Scale(divide=False), "MulBackward1")
register(Scale(divide=True), "DivBackward1")
register(Multiply(), "MulBackward0")
register(Divide(), "DivBackward0")
register(Elementwise(_tanh), "TanhBackward0")
register(Elementwise(_sigmoid), "SigmoidBackward0")
register(Elementwise(_relu, positive_mask=True), "ReluBackward0")
register(Elementwise(_exp), "ExpBackward0")
register(Elementwise(_reciprocal), "ReciprocalBackward0")
register(
    Elementwise(
        _from_input(lambda fn, x: F.gelu(x, approximate=fn._saved_approximate))
    ),
    "GeluBackward0",
)
register(Elementwise(_from_input(lambda fn, x: F.silu(x))), "SiluBackward0")
register(
    Elementwise(
        _from_input(lambda fn, x: F.softplus(x, fn._saved_beta, fn._saved_threshold))
    ),
    "SoftplusBackward0",
)
register(
    Elementwise(_from_input(lambda fn, x: F.leaky_relu(x, fn._saved_negative_slope))),
    "LeakyReluBackward0",
)
register(Elementwise(_from_input(lambda fn, x: torch.log(x))), "LogBackward0")
register(Elementwise(_from_input(lambda fn, x: torch.sin(x))), "SinBackward0")
register(Elementwise(_from_input(lambda fn, x: torch.cos(x))), "CosBackward0")
register(Elementwise(_from_input(lambda fn, x: x**fn._saved_exponent)), "PowBackward0")
register(Softmax(), "SoftmaxBackward0")
register(VectorNorm(), "LinalgVectorNormBackward0")
register(Glu(), "GluBackward0")
