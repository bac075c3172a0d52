"""Rules for losses: mse, huber, smooth-L1, binary cross-entropy (on probabilities
or logits), and cross-entropy's log-softmax and NLL.

Their second-order terms are the loss Hessian (``loss = True``), the only
terms the Gauss-Newton diagonal (:func:`ggn_diagonal`) keeps.

Example:
    >>> import torch
    >>> from gradgraph.derivatives import propagated_hessian_diagonal
    >>> w = torch.tensor([1.0, 2.0], requires_grad=True)
    >>> propagated_hessian_diagonal(torch.nn.functional.mse_loss(w, -w), w)  # 8 / 2
    tensor([4., 4.])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..base import (
    Rule,
    call_backward,
    diagonal_columns,
    per_sample_or_dense,
    row_columns,
    rows_along,
    saved_dim,
    scale,
)
from ..registry import register

_REDUCTION_NONE, _REDUCTION_MEAN = 0, 1


class PointwiseLoss(Rule):
    """mse / huber / smooth-L1 of (input, target): curvature ``diag(h(x - t))``."""

    loss = True

    def __init__(self, curvature: Callable[[Any, torch.Tensor], Any]):
        self.curvature = curvature

    def pullback(self, ctx, block, pos):
        fn = ctx.fn
        if fn._saved_reduction == _REDUCTION_NONE:
            slope = call_backward(fn, torch.ones_like(ctx.grad))[pos]
            return scale(block, slope, ctx.out_shape)
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
            out[1] = scale(cols, -1.0, tuple(x.shape))
        return out


def _mse_curvature(fn, diff):
    return 2.0


def _huber_curvature(fn, diff):
    return (diff.abs() < fn._saved_delta).to(diff.dtype)


def _smooth_l1_curvature(fn, diff):
    beta = fn._saved_beta
    return (diff.abs() < beta).to(diff.dtype) / beta


class BinaryCrossEntropy(PointwiseLoss):
    """Binary cross-entropy of probabilities ``p`` or of logits ``x``.

    Per entry, on probabilities: ``-w (t log p + (1 - t) log(1 - p))``, with
    curvature ``w (t / p^2 + (1 - t) / (1 - p)^2)`` in ``p``; on logits:
    ``w ((1 - t) x + (1 + (q - 1) t) softplus(-x))`` (``q`` the positive
    weight), with curvature ``w (1 + (q - 1) t) sigmoid(x) sigmoid(-x)``. A
    target that depends on a parameter is refused.
    """

    def __init__(self, logits: bool):
        super().__init__(curvature=None)  # the residual reads x and t itself
        self.logits = logits

    def refuses(self, fn, flows, coupled):
        if len(flows) > 1 and flows[1]:
            return f"{type(fn).__name__} (a target that depends on a parameter)"
        return None

    def residual(self, ctx):
        fn = ctx.fn
        x, t = fn._saved_self, fn._saved_target
        g = ctx.grad / x.numel() if fn._saved_reduction == _REDUCTION_MEAN else ctx.grad
        if self.logits:
            curvature = torch.sigmoid(x) * torch.sigmoid(-x)
            if fn._saved_pos_weight is not None:
                curvature = curvature * (1 + (fn._saved_pos_weight - 1) * t)
        else:
            curvature = t / (x * x) + (1 - t) / ((1 - x) * (1 - x))
        if fn._saved_weight is not None:
            curvature = curvature * fn._saved_weight
        cols = diagonal_columns((g * curvature).expand(x.shape))
        return {} if cols is None else {0: cols}


class LogSoftmax(Rule):
    """log_softmax along any dim: ``y = x - logsumexp(x)``, per row.

    Each output's Hessian is ``-(diag(p) - p p^T)``, so the residual is
    ``-(sum_k g_k) (diag(p) - p p^T)`` per row: with the NLL above it, the
    cross-entropy Hessian. ``diag(sqrt p) - p sqrt(p)^T`` is a square root.
    """

    loss = True
    takes_tokens = True

    def _p(self, ctx):
        p = ctx.fn._saved_result.exp()
        return p, saved_dim(ctx.fn._saved_dim, p.dim())

    def pullback(self, ctx, block, pos):
        p, dim = self._p(ctx)
        block = per_sample_or_dense(block, ctx.out_shape, dim)
        data = block.data - p * block.data.sum(dim + 1, keepdim=True)
        return type(block)(data, block.sign)

    def residual(self, ctx):
        p, dim = self._p(ctx)
        ps = rows_along(p, dim)
        s = rows_along(-ctx.grad.sum(dim, keepdim=True), dim)  # [N, R, 1]
        eye = torch.eye(ps.shape[-1], dtype=p.dtype, device=p.device)
        # column c of a row: sqrt|s| sqrt(p_c) (e_c - p)
        factors = ps.sqrt().unsqueeze(-1) * (eye - ps.unsqueeze(-2))
        factors = factors * s.abs().sqrt().unsqueeze(-1)
        signs = s.sign().expand_as(ps)
        return {0: row_columns(factors, signs, tuple(p.shape), dim)}


register(Rule(), "NllLossBackward0")
register(PointwiseLoss(_mse_curvature), "MseLossBackward0")
register(PointwiseLoss(_huber_curvature), "HuberLossBackward0")
register(PointwiseLoss(_smooth_l1_curvature), "SmoothL1LossBackward0")
register(LogSoftmax(), "LogSoftmaxBackward0")
register(BinaryCrossEntropy(logits=True), "BinaryCrossEntropyWithLogitsBackward0")
register(BinaryCrossEntropy(logits=False), "BinaryCrossEntropyBackward0")
