"""Curvature rules for attention: batched matrix products and fused SDPA.

* :class:`BatchedMatMul` (``bmm``, ``baddbmm``; batched ``matmul`` shows as
  these behind views and expands): linear in each factor, per batch entry,
  so per-sample columns stay per-sample on the way to both factors. When
  both factors depend on one parameter (``Q K^T``, ``attention @ V``) the
  residual is their cross term, batch entry by batch entry.
* :class:`FusedAttention` (``scaled_dot_product_attention``'s fused kernels:
  flash for CPU, flash, memory-efficient and cuDNN on CUDA): the node's
  saved query, key and value go through attention's own mathematics
  (``softmax(q k^T scale + mask) v``), re-implemented here. The pullback is
  a batch of VJPs of it, and the residual is the exact local Hessian of
  ``<g, attention(q, k, v)>`` per batch entry and head (q-q, q-k, q-v, k-k,
  k-v cross terms; v-v is zero), eigendecomposed into signed columns. So
  the exact diagonal needs no double backward from torch, which the CPU
  flash kernel does not have.

Example:
    >>> import torch
    >>> from gradgraph.derivatives import propagated_hessian_diagonal
    >>> w = torch.tensor([[[1.0, 2.0]]], requires_grad=True)
    >>> propagated_hessian_diagonal(torch.bmm(w.transpose(1, 2), w).sum(), w)
    tensor([[[2., 2.]]])
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.func import jacrev, vjp, vmap

from ..base import OpContext, Rule, cross_pair
from ..columns import (
    Columns,
    DenseColumns,
    GroupColumns,
    OuterColumns,
    SampleColumns,
)
from ..registry import register
from .elementwise import Softmax
from .linalg import MatMul

__all__ = ["BatchedMatMul", "FusedAttention", "attention"]


class BatchedMatMul(MatMul):
    """``out = beta bias + alpha batch1 @ batch2`` over a batch dim (dim 0)."""

    takes_groups = True

    def _mats(self, ctx: OpContext) -> tuple[torch.Tensor, torch.Tensor, float]:
        fn = ctx.fn
        if self.offset:
            return fn._saved_batch1, fn._saved_batch2, fn._saved_alpha
        return fn._saved_self, fn._saved_mat2, 1

    def pullback(self, ctx, block, pos):
        if self.offset and pos == 0:  # the bias, as for addmm
            return super().pullback(ctx, block, pos)
        a, b, alpha = self._mats(ctx)
        if isinstance(block, OuterColumns) or not isinstance(
            block, DenseColumns | SampleColumns | GroupColumns
        ):
            block = block.to_dense(ctx.out_shape)
        data = block.data
        if isinstance(block, GroupColumns):  # batch entries b * H .. : flat
            data = data.flatten(1, 2)
        if pos == self.offset:  # data[c] @ b^T, per batch entry
            data = data @ (b.transpose(1, 2) * alpha)
        else:
            data = (a.transpose(1, 2) * alpha) @ data
        if isinstance(block, GroupColumns):
            data = data.unflatten(1, block.data.shape[1:3])
        return type(block)(data, block.sign)

    def residual(self, ctx):
        i, j = self.offset, self.offset + 1
        if not (ctx.flows(i) and ctx.flows(j) and ctx.coupled(i, j)):
            return {}
        a, b, alpha = self._mats(ctx)
        g = ctx.grad * alpha  # d2 out[n, r, s] / d a[n, r, k] d b[n, k, s] = 1
        batch, rows, inner = a.shape
        cols = b.shape[2]
        if rows <= cols:  # one-hot entries of a; b's column: row k holds g[n, r]
            eye = torch.eye(rows * inner, dtype=g.dtype, device=g.device)
            at_a = eye.reshape(rows * inner, 1, rows, inner).expand(-1, batch, -1, -1)
            at_b = g.new_zeros(rows, inner, batch, inner, cols)
            k = torch.arange(inner, device=g.device)
            at_b[:, k, :, k] = g.permute(1, 0, 2).unsqueeze(0)
            at_b = at_b.reshape(rows * inner, batch, inner, cols)
        else:  # one-hot entries of b; a's column: column k holds g[n, :, s]
            eye = torch.eye(inner * cols, dtype=g.dtype, device=g.device)
            at_b = eye.reshape(inner * cols, 1, inner, cols).expand(-1, batch, -1, -1)
            at_a = g.new_zeros(inner, cols, batch, rows, inner)
            k = torch.arange(inner, device=g.device)
            at_a[k, :, :, :, k] = g.permute(2, 0, 1).unsqueeze(0)
            at_a = at_a.reshape(inner * cols, batch, rows, inner)
        sign = g.new_ones(at_a.shape[0], batch)
        a2, b2 = cross_pair(SampleColumns(at_a, sign), SampleColumns(at_b, sign))
        return {i: a2, j: b2}


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    causal: bool,
    scale: float | None,
) -> torch.Tensor:
    """``softmax(q k^T scale + mask) v``: what every SDPA backend computes.

    Example:
        >>> q = torch.ones(1, 2, 3)
        >>> attention(q, q, q, None, True, None).shape
        torch.Size([1, 2, 3])
    """
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = q @ k.transpose(-1, -2) * scale
    if causal:
        lq, lk = q.shape[-2], k.shape[-2]
        keep = torch.ones(lq, lk, dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~keep, float("-inf"))
    if mask is not None:
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))
        else:
            scores = scores + mask
    return torch.softmax(scores, dim=-1) @ v


def _saved(fn: Any, *names: str) -> Any:
    for name in names:
        if hasattr(fn, name):
            return getattr(fn, name)
    return None


class FusedAttention(Rule):
    """A fused ``scaled_dot_product_attention`` node, from attention's mathematics."""

    def _inputs(self, fn: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return fn._saved_query, fn._saved_key, fn._saved_value

    def _attend(self, fn: Any, mask: torch.Tensor | None = None):
        """``attention`` with the node's mask (or ``mask``), causal flag and scale."""
        if mask is None:
            mask = _saved(fn, "_saved_attn_mask", "_saved_attn_bias")
        causal = bool(_saved(fn, "_saved_is_causal") or False)
        scale = _saved(fn, "_saved_scale")
        return lambda q, k, v: attention(q, k, v, mask, causal, scale)

    def refuses(self, fn, flows, coupled):
        op = type(fn).__name__
        if (_saved(fn, "_saved_dropout_p") or 0) != 0:
            return f"{op} (dropout_p > 0: a random mask; use dropout_p=0 or .eval())"
        if _saved(fn, "_saved_cum_seq_q") is not None:
            return f"{op} (variable-length / nested inputs)"
        q, k, v = self._inputs(fn)
        if q.shape[:-2] != k.shape[:-2] or k.shape[:-1] != v.shape[:-1]:
            return f"{op} (query, key and value of different batch or head counts)"
        return None

    def _layout(self, ctx: OpContext, block: Columns) -> Columns:
        """Per-sample columns stay so: attention keeps batch entries apart."""
        q, _, _ = self._inputs(ctx.fn)
        if isinstance(block, SampleColumns) and q.dim() >= 3:
            return block
        return block.to_dense(ctx.out_shape)

    def pullback(self, ctx, block, pos):
        memo = ctx.memo.get("pullback")
        if memo is None or memo[0] is not block:  # one VJP batch for q, k and v
            if "vjp" not in ctx.memo:
                with torch.enable_grad():
                    _, ctx.memo["vjp"] = vjp(
                        self._attend(ctx.fn), *self._inputs(ctx.fn)
                    )
            laid = self._layout(ctx, block)
            memo = (block, laid, vmap(ctx.memo["vjp"])(laid.data))
            ctx.memo["pullback"] = memo
        _, laid, grads = memo
        return type(laid)(grads[pos], laid.sign)

    def residual(self, ctx):
        fn = ctx.fn
        q, k, v = self._inputs(fn)
        lead, lq, lk = q.shape[:-2], q.shape[-2], k.shape[-2]
        sizes = [t.shape[-2:].numel() for t in (q, k, v)]
        flat = [t.reshape(-1, n) for t, n in zip((q, k, v), sizes, strict=True)]
        x = torch.cat(flat, dim=1)  # [T, n]: one row per batch entry and head
        g = ctx.grad.reshape(-1, *ctx.grad.shape[-2:])
        mask = _saved(fn, "_saved_attn_mask", "_saved_attn_bias")
        if mask is None:
            mask = q.new_zeros(())
        masks = mask.expand(*lead, lq, lk).reshape(-1, lq, lk)  # one per row

        def weighted(row, grad, m):
            parts = row.split(sizes)
            shapes = [t.shape[-2:] for t in (q, k, v)]
            qs, ks, vs = (p.reshape(s) for p, s in zip(parts, shapes, strict=True))
            return (grad * self._attend(fn, m)(qs, ks, vs)).sum()

        with torch.enable_grad():
            local = vmap(jacrev(jacrev(weighted)))(x, g, masks)  # [T, n, n]
        values, vectors = torch.linalg.eigh(local)
        cols = vectors * values.abs().sqrt().unsqueeze(1)  # column j: [:, :, j]
        cols, sign = cols.transpose(1, 2), values.sign()  # [T, n(cols), n]
        out = {}
        start = 0
        for pos, (t, n) in enumerate(zip((q, k, v), sizes, strict=True)):
            part = cols[..., start : start + n]
            start += n
            if ctx.flows(pos):
                out[pos] = _on_slices(part, sign, t.shape)
        return out


def _on_slices(cols: torch.Tensor, sign: torch.Tensor, shape: torch.Size) -> Columns:
    """Columns ``cols[t, j]`` each on slice ``t`` of a ``[*lead, L, d]`` tensor.

    Per sample (dim 0 of ``lead``) when there is a batch dim: column
    ``(r, j)`` of sample ``s`` holds ``cols[(s, r), j]`` at slice ``(s, r)``.
    """
    lead = shape[:-2]
    total, n = cols.shape[:2]
    if len(lead) == 0:
        return DenseColumns(cols[0].reshape(n, *shape), sign[0])
    samples = lead[0]
    rest = total // samples
    cols = cols.reshape(samples, rest, n, *shape[-2:])
    data = cols.new_zeros(rest, n, samples, rest, *shape[-2:])
    r = torch.arange(rest, device=cols.device)
    data[r, :, :, r] = cols.permute(1, 2, 0, 3, 4)
    data = data.reshape(rest * n, *shape)
    signs = sign.reshape(samples, rest, n).permute(1, 2, 0).reshape(rest * n, samples)
    return SampleColumns(data, signs)


_FUSED = FusedAttention()

# the math kernel's softmax: rows masked out entirely give zeros, not NaN
register(Softmax(), "SafeSoftmaxBackward0")
register(BatchedMatMul(with_bias=False), "BmmBackward0")
register(BatchedMatMul(with_bias=True), "BaddbmmBackward0")
register(
    _FUSED,
    "ScaledDotProductFlashAttentionForCpuBackward0",
    "ScaledDotProductFlashAttentionBackward0",
    "ScaledDotProductEfficientAttentionBackward0",
    "ScaledDotProductCudnnAttentionBackward0",
)
