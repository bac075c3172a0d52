"""Rules for matrix products: ``mm`` and ``addmm`` (``nn.Linear``), ``mv`` and
``dot`` / ``vdot`` (spectral normalization's ``u^T W v``).

Example:
    >>> import torch
    >>> from gradgraph.derivatives import propagated_hessian_diagonal
    >>> w = torch.tensor([[1.0, 2.0]], requires_grad=True)
    >>> x = torch.tensor([[3.0], [4.0]])
    >>> propagated_hessian_diagonal(((x @ w) ** 2).sum(), w).round()  # 2 sum x^2
    tensor([[50., 50.]])
"""

from __future__ import annotations

import torch

from ..base import Fold, Rule, cross_pair, scale, unbroadcast
from ..columns import (
    DenseColumns,
    GroupColumns,
    OuterColumns,
    ProductColumns,
    SampleColumns,
)
from ..registry import register


class MatMul(Rule):
    """mm / addmm: ``out = beta bias + alpha mat1 @ mat2``.

    Row ``n`` of the output comes from row ``n`` of ``mat1`` only, so
    per-sample columns stay per-sample on the way to ``mat1``; on the way to
    ``mat2`` (a weight, usually) each column is an outer product, kept lazy.
    The residual is the cross term between ``mat1`` and ``mat2``, needed only
    when both depend on one parameter (a weight used twice).
    """

    takes_groups = True

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
                scale(block, beta, ctx.out_shape), ctx.in_shapes[0], ctx.out_shape
            )
        mat1, mat2, alpha = self._mats(ctx)
        if isinstance(block, OuterColumns):
            block = block.to_dense(ctx.out_shape)
        if pos == self.offset:  # mat1
            data = block.data @ (mat2.T * alpha)
            return type(block)(data, block.sign)
        if isinstance(block, GroupColumns):  # mat2: per sample, mat1_b^T @ v_b
            b, ell = block.data.shape[1:3]
            left = block.data.transpose(-1, -2).unsqueeze(2)  # [C, B, 1, M, L]
            right = (mat1 * alpha).reshape(b, ell, -1).transpose(-1, -2)
            shape = tuple(ctx.in_shapes[pos])
            return ProductColumns(left, right.unsqueeze(1), block.sign, shape, True)
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
        a2, b2 = cross_pair(a, b)
        return {i: a2, j: b2}

    def fold(self, ctx, blocks, with_residual):
        """A weight that also reaches ``mat1`` (an LM head tied to the embedding).

        Both the columns that end here and the residual have a part at
        ``mat1`` and a cross term with ``mat2``, so neither could be
        compressed: they meet themselves again at the weight. Per row of
        ``mat1`` (``D`` wide) their ``mat1`` parts span at most ``D``
        dimensions; with ``Q`` the eigenvectors of their signed Gram ``G``
        (``Q Q^T = I``), the curvature is exact as

        * ``D`` columns per row: ``Q`` with signs ``eig(G)``;
        * their partners at ``mat2`` (``columns.Paired``): ``2 Q^T Y S B^T``
          for the columns (``Y`` at ``mat1``, ``B`` at ``mat2``, signs ``S``),
          and ``2 alpha Q^T (x) g`` for the residual;
        * the columns' parts at ``mat2`` and the bias, as a source of their own.

        Per-row columns only (a language model's head); None otherwise.
        """
        i, j = self.offset, self.offset + 1
        if not (ctx.flows(i) and ctx.flows(j) and ctx.coupled(i, j)):
            return None
        if self.offset and ctx.flows(0) and ctx.coupled(0, i):
            return None
        if len(ctx.in_shapes[i]) != 2:  # bmm (a subclass): not folded
            return None
        rows, width = ctx.in_shapes[i]
        if not all(type(b) is SampleColumns and b.samples == rows for b in blocks):
            return None
        mat1, mat2, alpha = self._mats(ctx)
        if mat1.dtype not in (torch.float32, torch.float64):  # eigh's dtypes
            return None
        count = sum(b.count for b in blocks) + (2 * width if with_residual else 0)
        if count <= width:
            return None
        ones = mat1.new_ones(width, rows)
        if blocks:
            block = SampleColumns(
                torch.cat([b.data for b in blocks]), torch.cat([b.sign for b in blocks])
            )
            at_mat1 = block.data @ (mat2.T * alpha)  # Y: [C, rows, D]
            gram = torch.einsum("crd,cr,cre->rde", at_mat1, block.sign, at_mat1)
            values, bases = torch.linalg.eigh(gram)  # [rows, D], [rows, D, D]
            along = torch.einsum("crd,rde->cre", at_mat1, bases)  # Y Q
            right = 2 * torch.einsum("cr,cre,crv->erv", block.sign, along, block.data)
            partners = [(j, OuterColumns((mat1 * alpha).unsqueeze(0), right, ones))]
            rest = {
                pos: self.pullback(ctx, block, pos)
                for pos in range(j + 1)
                if pos != i and ctx.flows(pos)
            }
        else:
            values = mat1.new_zeros(rows, width)
            bases = torch.eye(width, dtype=mat1.dtype, device=mat1.device)
            bases = bases.expand(rows, width, width)
            partners, rest = [], {}
        basis = bases.permute(2, 0, 1)  # column e of row r: bases[r, :, e]
        if with_residual:
            g = (2 * alpha) * ctx.grad
            partners.append((j, OuterColumns(basis, g.unsqueeze(0), ones)))
        columns = SampleColumns(basis.contiguous(), values.T.contiguous())
        return Fold({i: columns}, partners, rest, with_residual)


class VectorProduct(Rule):
    """``mv``, ``dot``, ``vdot``: linear in each side (pulled back by the node's
    own backward); their cross term, needed only when one parameter reaches
    both sides, is refused."""

    def refuses(self, fn, flows, coupled):
        if len(flows) > 1 and flows[0] and flows[1] and coupled(0, 1):
            return f"{type(fn).__name__} (both sides depend on one parameter)"
        return None


register(MatMul(with_bias=False), "MmBackward0")
register(MatMul(with_bias=True), "AddmmBackward0")
register(VectorProduct(), "MvBackward0", "DotBackward0", "VdotBackward0")
