"""Curvature rules for more elementwise ops: RMSNorm's ``rsqrt``, hard activations.

Each is an :class:`~.elementwise.Elementwise` rule: its pullback scales
the columns by ``f'(x)`` and its residual is ``diag(g f''(x))``. ``rsqrt``,
``sqrt`` and ``c ** x`` have closed forms from their saved result; the
piecewise ones (Hardtanh / ReLU6, Hardswish, Hardsigmoid, clamp, abs) take
``f'`` and ``f''`` from torch's own derivative formulas (double backward on
the saved input), so the kinks are where torch puts them; Hardsigmoid, which
torch cannot differentiate twice, has its slope written out. ELU / SELU /
CELU, Mish, LogSigmoid, erf, log1p, expm1 and the shrinks and thresholds
follow the same pattern; PReLU (a learned slope) and BLOOM's custom GeLU
Function have rules of their own. ``ToCopyBackward0`` (a dtype or device
cast) passes columns on, cast back.

Example:
    >>> import torch
    >>> from gradgraph.derivatives import propagated_hessian_diagonal
    >>> w = torch.tensor([1.0, 4.0], requires_grad=True)
    >>> propagated_hessian_diagonal(torch.rsqrt(w).sum(), w)  # 3/4 w^(-5/2)
    tensor([0.7500, 0.0234])
"""

from __future__ import annotations

import math
import sys

import torch
import torch.nn.functional as F

from ..base import Rule, cast_columns, input_dtype, scale, unbroadcast
from ..registry import register
from .elementwise import Elementwise, _from_input

__all__ = ["BloomGelu", "Cast", "PReLU"]


def _rsqrt(fn):
    y = fn._saved_result  # x^(-1/2)
    y3 = y * y * y
    return -0.5 * y3, 0.75 * y3 * y * y


def _sqrt(fn):
    y = fn._saved_result
    return 0.5 / y, -0.25 / (y * y * y)


def _exp_minus_one(fn):
    y = fn._saved_result + 1  # exp(x)
    return y, y


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

    takes_tokens = True

    def pullback(self, ctx, block, pos):
        child, out_nr = ctx.fn.next_functions[pos]
        return cast_columns(block, ctx.out_shape, *input_dtype(child, out_nr))


class PReLU(Rule):
    """``prelu(x, a)``: ``x`` where ``x > 0``, else ``a x`` (``a`` per channel).

    Piecewise linear in ``x`` and linear in ``a``; their cross term (``1``
    where ``x <= 0``) matters only when one parameter reaches both, which is
    refused.
    """

    def refuses(self, fn, flows, coupled):
        if len(flows) > 1 and flows[0] and flows[1] and coupled(0, 1):
            return "PreluKernelBackward0 (a slope that also shapes its own input)"
        return None

    def pullback(self, ctx, block, pos):
        x, a = ctx.fn._saved_self, ctx.fn._saved_weight  # a broadcasts against x
        factor = torch.where(x > 0, 1, a) if pos == 0 else torch.where(x > 0, 0, x)
        block = scale(block, factor, ctx.out_shape)
        return unbroadcast(block, ctx.in_shapes[pos], ctx.out_shape)


class BloomGelu(Elementwise):
    """BLOOM's ``GeLUFunction`` (a custom autograd.Function in ``transformers``).

    ``f'`` is its own backward formula (``bloom_gelu_back``) and ``f''`` that
    formula's derivative, as the Function's double backward has them. A
    Function of the same name from anywhere else is refused.
    """

    home = "transformers.models.bloom.modeling_bloom"

    def __init__(self):
        super().__init__(self._derivatives)

    def refuses(self, fn, flows, coupled):
        if getattr(getattr(fn, "_forward_cls", None), "__module__", "") != self.home:
            return f"{type(fn).__name__} (a custom autograd.Function)"
        return None

    def _derivatives(self, fn):
        back = sys.modules[self.home].bloom_gelu_back
        (x,) = fn.saved_tensors
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            d1 = back(torch.ones_like(x), (x,))
            (d2,) = torch.autograd.grad(d1.sum(), x)
        return d1.detach(), d2


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
register(
    Elementwise(
        _from_input(
            lambda fn, x: torch.ops.aten.elu(
                x, fn._saved_alpha, fn._saved_scale, fn._saved_input_scale
            )
        )
    ),
    "EluBackward0",
)
register(
    Elementwise(_from_input(lambda fn, x: F.celu(x, fn._saved_alpha))), "CeluBackward0"
)
register(Elementwise(_from_input(lambda fn, x: F.mish(x))), "MishBackward0")
register(Elementwise(_from_input(lambda fn, x: F.logsigmoid(x))), "LogSigmoidBackward0")
register(Elementwise(_from_input(lambda fn, x: torch.erf(x))), "ErfBackward0")
register(Elementwise(_from_input(lambda fn, x: torch.log1p(x))), "Log1PBackward0")
register(Elementwise(_exp_minus_one), "Expm1Backward0")
register(
    Elementwise(_piecewise_linear),
    "HardshrinkBackward0",
    "SoftshrinkBackward0",
    "ThresholdBackward0",
    "ClampMinBackward0",
    "ClampMaxBackward0",
)
register(PReLU(), "PreluKernelBackward0")
register(BloomGelu(), "GeLUFunctionBackward")
