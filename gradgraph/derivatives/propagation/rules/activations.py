"""Curvature rules for more elementwise ops: RMSNorm's ``rsqrt``, hard activations.

Each is an :class:`~.elementwise.Elementwise` rule: its pullback scales
the columns by ``f'(x)`` and its residual is ``diag(g f''(x))``. ``rsqrt``,
``sqrt`` and ``c ** x`` have closed forms from their saved result; the
piecewise ones (Hardtanh / ReLU6, Hardswish, Hardsigmoid, clamp, abs) take
``f'`` and ``f''`` from torch's own derivative formulas (double backward on
the saved input), so the kinks are where torch puts them; Hardsigmoid, which
torch cannot differentiate twice, has its slope written out. ``ToCopyBackward0``
(a dtype or device cast) passes columns on, cast back.

Example:
    >>> import torch
    >>> from gradgraph.derivatives import propagated_hessian_diagonal
    >>> w = torch.tensor([1.0, 4.0], requires_grad=True)
    >>> propagated_hessian_diagonal(torch.rsqrt(w).sum(), w)  # 3/4 w^(-5/2)
    tensor([0.7500, 0.0234])
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..base import Rule, cast_columns, input_dtype
from ..registry import register
from .elementwise import Elementwise, _from_input

__all__ = ["Cast"]


def _rsqrt(fn):
    y = fn._saved_result  # x^(-1/2)
    y3 = y * y * y
    return -0.5 * y3, 0.75 * y3 * y * y


def _sqrt(fn):
    y = fn._saved_result
    return 0.5 / y, -0.25 / (y * y * y)


def _scalar_power(fn):
    """``c ** x``: derivatives ``y ln c`` and ``y ln^2 c``."""
    log_c = math.log(float(fn._saved_self))
    y = fn._saved_result
    return y * log_c, y * log_c * log_c


def _piecewise_linear(fn):
    """Slope from the node's own backward (torch's kinks), no curvature."""
    x = fn._saved_self
    return fn(torch.ones_like(x)), 0


class Cast(Rule):
    """``x.to(dtype or device)``: the identity, with the columns cast back."""

    def pullback(self, ctx, block, pos):
        child, out_nr = ctx.fn.next_functions[pos]
        return cast_columns(block, ctx.out_shape, *input_dtype(child, out_nr))


register(Elementwise(_rsqrt), "RsqrtBackward0")
register(Elementwise(_sqrt), "SqrtBackward0")
register(Elementwise(_scalar_power), "PowBackward2")
register(Elementwise(_from_input(lambda fn, x: F.hardswish(x))), "HardswishBackward0")
register(
    Elementwise(_piecewise_linear),
    "HardtanhBackward0",
    "HardsigmoidBackward0",
    "ClampBackward1",
    "AbsBackward0",
)
register(Cast(), "ToCopyBackward0")
