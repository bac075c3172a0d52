"""Curvature rules for weight reparametrizations: weight normalization.

``torch._weight_norm(v, g, dim)`` (``nn.utils.parametrizations.weight_norm``,
wav2vec2's positional convolution) is ``w = g v / ||v||`` per row: a row is
one slice of ``v`` along ``dim`` and ``g`` holds one number per row (torch
fuses it into one node for the first or last dim; other dims are made of
ops that have rules already). With ``u = v / n`` (``n = ||v||``), ``G = dL/dw``
on the row, ``c = <G, u>`` and ``G' = G - c u``, the row's second-order term
over ``(v, g)`` is

    vv: (g / n^2) (-c (I - u u^T) - (G' u^T + u G'^T)),  vg: G' / n,  gg: 0,

written as the ``K`` columns ``(I - u u^T) e_i`` (a projection) for the first
part and three more for the rest: it lives on ``u`` and ``G'`` at ``v`` and on
``g``, where it is a symmetric 3x3 form, taken by its eigenvectors.

Example:
    >>> import torch
    >>> from gradgraph.derivatives import propagated_hessian_diagonal
    >>> v = torch.tensor([[3.0, 4.0]], requires_grad=True)
    >>> g = torch.ones(1, 1, requires_grad=True)
    >>> w = torch._weight_norm(v, g, 0)
    >>> propagated_hessian_diagonal((w[0, 0] * g).sum(), [v, g])[1]  # 2 v_0 / n
    tensor([[1.2000]])
"""

from __future__ import annotations

import torch

from ..base import Rule, saved_dim
from ..columns import DenseColumns, RowColumns
from ..registry import register

__all__ = ["WeightNorm"]


class _Rows:
    """``[C, *shape]`` as ``[C, R, K]`` rows (slices along ``dim``), and back."""

    def __init__(self, shape: tuple[int, ...], dim: int):
        self.shape, self.dim = shape, dim
        self.r = shape[dim]
        self.k = torch.Size(shape).numel() // self.r

    def split(self, data: torch.Tensor) -> torch.Tensor:
        data = data.movedim(self.dim + 1, 1)
        return data.reshape(data.shape[0], self.r, self.k)

    def join(self, rows: torch.Tensor) -> torch.Tensor:
        rest = [s for i, s in enumerate(self.shape) if i != self.dim]
        return rows.reshape(rows.shape[0], self.r, *rest).movedim(1, self.dim + 1)


class WeightNorm(Rule):
    """WeightNormInterfaceBackward0: ``w = g v / ||v||`` per row (see module doc)."""

    def _state(self, ctx):
        """Rows of ``v``; per row ``u`` ``[1, R, K]``, ``n`` and ``g`` ``[1, R, 1]``."""
        if "state" not in ctx.memo:
            fn = ctx.fn
            v = fn._saved_v
            rows = _Rows(tuple(v.shape), saved_dim(fn._saved_dim, v.dim()))
            n = fn._saved_result1.reshape(1, rows.r, 1)
            u = rows.split(v.unsqueeze(0)) / n
            g = fn._saved_g.reshape(1, rows.r, 1)
            ctx.memo["state"] = rows, u, n, g
        return ctx.memo["state"]

    def pullback(self, ctx, block, pos):
        rows, u, n, g = self._state(ctx)
        if not isinstance(block, DenseColumns):
            block = block.to_dense(ctx.out_shape)
        data = rows.split(block.data)
        along_u = (data * u).sum(-1, keepdim=True)
        if pos == 0:
            return DenseColumns(rows.join(g / n * (data - along_u * u)), block.sign)
        return DenseColumns(along_u.reshape(-1, *ctx.in_shapes[1]), block.sign)

    def residual(self, ctx):
        rows, u, n, g = self._state(ctx)
        grad = rows.split(ctx.grad.unsqueeze(0))  # [1, R, K]
        c = (grad * u).sum(-1, keepdim=True)
        across = grad - c * u  # G'
        m = across.norm(dim=-1, keepdim=True)
        q = across / m.clamp_min(torch.finfo(m.dtype).tiny)
        # -(g c / n^2) (I - u u^T): the columns (I - u u^T) e_i
        eye = torch.eye(rows.k, dtype=u.dtype, device=u.device)
        weight = -g * c / (n * n)  # [1, R, 1]
        projection = (eye - u.unsqueeze(-1) * u.unsqueeze(-2)) * weight.abs().sqrt()[
            ..., None
        ]
        # the 3x3 form on (u, q) at v and g
        form = u.new_zeros(*u.shape[:2], 3, 3)
        form[..., 0, 1] = form[..., 1, 0] = (-g * m / (n * n))[..., 0]
        form[..., 1, 2] = form[..., 2, 1] = (m / n)[..., 0]
        values, vectors = torch.linalg.eigh(form)  # [1, R, 3], [1, R, 3, 3]
        size = values.abs().sqrt().unsqueeze(-1)  # [1, R, 3, 1]
        basis = torch.stack([u, q], dim=2)  # [1, R, 2, K]
        at_v = size * (vectors[..., :2, :].transpose(-1, -2) @ basis)  # [1, R, 3, K]
        at_g = size * vectors[..., 2, :].unsqueeze(-1)  # [1, R, 3, 1]
        factors_v = torch.cat([projection, at_v], dim=2)
        factors_g = torch.cat([u.new_zeros(1, rows.r, rows.k, 1), at_g], dim=2)
        signs = torch.cat([weight.sign().expand(1, rows.r, rows.k), values.sign()], -1)
        g_rows = _Rows((rows.r, 1), 0)
        in_g = tuple(ctx.in_shapes[1] or ())
        out = {}
        if ctx.flows(0):
            out[0] = RowColumns(factors_v, signs, rows.join, False)
        if ctx.flows(1):

            def join_g(data):
                return g_rows.join(data).reshape(data.shape[0], *in_g)

            out[1] = RowColumns(factors_g, signs, join_g, False)
        return out


register(WeightNorm(), "WeightNormInterfaceBackward0")
