"""Curvature rules for normalization layers: LayerNorm, GroupNorm, BatchNorm.

Each normalizes groups ("rows") of ``K`` entries of its input ``x``:
``xhat = (x - mean) s`` with ``s = (var + eps)^(-1/2)`` (biased variance),
then ``y = w xhat + b`` with an optional affine ``w, b``:

* LayerNorm: a row is the trailing ``normalized_shape`` of one position;
* GroupNorm: a row is one group of channels (and all positions) of a sample;
* BatchNorm, training: a row is one channel over the whole batch, so it
  couples the samples and its columns are written out densely; its own term
  is kept as a diagonal (per-sample columns) plus three columns per channel;
* BatchNorm, eval: running statistics, an affine map per channel (no row).

Per row, ``d xhat / dx = s P`` with ``P = I - 1 1^T / K - xhat xhat^T / K``
(symmetric), and with ``h = g w`` (``g = dL/dy``), ``a = <h, xhat>``,
``h~ = h - mean(h)`` the op's own second-order term is

    sum_j h_j d^2 xhat_j / dx^2
        = (s^2 / K) (-a Q + 3 a xhat xhat^T / K - xhat h~^T - h~ xhat^T),

written as ``K + 2`` signed columns per row: ``Q e_i`` for ``-a Q``
(``Q = I - 1 1^T / K``, a projection) and two along ``xhat`` and ``h~`` (the
eigenvectors of the 2x2 form the other terms make on them), which keeps
cancellation between columns small in float32. ``y`` is linear in ``b`` and in
``w``; the cross term between ``w`` and ``x``, ``sum_e g_e e_w(e) (J^T e)^T``
(``J = d xhat / dx``), matters only when one parameter reaches both (ALBERT's
shared layers: a LayerNorm whose weight also shaped its input); LayerNorm and
GroupNorm then add it as one column per entry of ``y`` (BatchNorm refuses).

Example:
    >>> import torch
    >>> from gradgraph.derivatives.propagation.registry import rule_for
    >>> type(rule_for("NativeLayerNormBackward0")).__name__
    'LayerNorm'
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..base import OpContext, Rule, cross_pair, diagonal_columns, row_columns
from ..columns import (
    ChainedColumns,
    Columns,
    DenseColumns,
    DiagonalColumns,
    OuterColumns,
    RowColumns,
    SampleColumns,
    TokenColumns,
    one_per_column,
)
from ..registry import register


@dataclass
class _Rows:
    """How a node's value splits into rows: permute by ``perm``, view ``[N, R, K]``.

    ``N`` is the sample dim when every row lies in one sample (``per_sample``),
    else 1 (then the columns are dense). ``affine`` are the dims the weight
    spans.
    """

    shape: tuple[int, ...]
    perm: tuple[int, ...]
    n: int
    r: int
    k: int
    affine: tuple[int, ...]
    per_sample: bool

    def split(self, data: torch.Tensor) -> torch.Tensor:
        """``[C, *shape]`` -> ``[C, N, R, K]``."""
        moved = data.permute(0, *(p + 1 for p in self.perm))
        return moved.reshape(data.shape[0], self.n, self.r, self.k)

    def join(self, rows: torch.Tensor) -> torch.Tensor:
        """``[C, N, R, K]`` -> ``[C, *shape]`` (the inverse of :meth:`split`)."""
        moved = rows.reshape(rows.shape[0], *(self.shape[p] for p in self.perm))
        inverse = [0] * len(self.perm)
        for i, p in enumerate(self.perm):
            inverse[p] = i
        return moved.permute(0, *(i + 1 for i in inverse))

    def weight_view(self, t: torch.Tensor) -> torch.Tensor:
        """An affine parameter shaped to broadcast against the node value."""
        view = [1] * len(self.shape)
        for d in self.affine:
            view[d] = self.shape[d]
        return t.reshape(view)


def _layer_norm_rows(fn) -> _Rows:
    shape = tuple(fn._saved_input.shape)
    d = len(fn._saved_normalized_shape)
    lead = len(shape) - d
    k = torch.Size(shape[lead:]).numel()
    affine = tuple(range(lead, len(shape)))
    if lead == 0:  # one row: the whole (unbatched) value
        return _Rows(shape, tuple(range(len(shape))), 1, 1, k, affine, False)
    r = torch.Size(shape[1:lead]).numel()
    return _Rows(shape, tuple(range(len(shape))), shape[0], r, k, affine, True)


def _group_norm_rows(fn) -> _Rows:
    shape = tuple(fn._saved_input.shape)
    n, groups = fn._saved_N, fn._saved_group
    k = fn._saved_C // groups * fn._saved_HxW
    return _Rows(shape, tuple(range(len(shape))), n, groups, k, (1,), True)


def _batch_norm_rows(fn) -> _Rows:
    shape = tuple(fn._saved_input.shape)
    perm = (1, 0, *range(2, len(shape)))  # channel first, then batch and positions
    k = torch.Size(shape).numel() // shape[1]
    return _Rows(shape, perm, 1, shape[1], k, (1,), False)


def _dense_unless_per_sample(block: Columns, rows: _Rows) -> Columns:
    if isinstance(block, OuterColumns) or (
        isinstance(block, SampleColumns) and not rows.per_sample
    ):
        return block.to_dense(rows.shape)
    return block


def _to_affine(block: Columns, rows: _Rows, param_shape: tuple) -> DenseColumns:
    """Sum columns over every dim but the affine ones: the weight's or bias' columns.

    Per-sample (per-token) columns become one column per (column, sample).
    """
    keep = set(rows.affine)
    if isinstance(block, SampleColumns | TokenColumns):
        lead = block.sign.dim() - 1
        dims = tuple(d + 1 for d in range(lead, len(rows.shape)) if d not in keep)
        data = block.data.sum(dims) if dims else block.data
        return one_per_column(data, block.sign, param_shape)
    dims = tuple(d + 1 for d in range(len(rows.shape)) if d not in keep)
    data = block.data.sum(dims) if dims else block.data
    return DenseColumns(data.reshape(data.shape[0], *param_shape), block.sign)


class _Normalization(Rule):
    """Shared by LayerNorm, GroupNorm and BatchNorm in training mode.

    Subclasses give the rows (:class:`_Rows`) and the per-row mean and ``s``.
    """

    op = ""
    weight_input_cross = True  # has the rule the w-x cross term (see module doc)

    def rows(self, fn) -> _Rows:
        raise TypeError(f"{type(self).__name__} does not split a value into rows")

    def refuses(self, fn, flows, coupled):
        if self.weight_input_cross:
            return None
        if len(flows) > 1 and flows[0] and flows[1] and coupled(0, 1):
            return f"{type(fn).__name__} (an affine weight that also shapes its input)"
        return None

    def _state(self, ctx: OpContext):
        """Rows, xhat and s in the ``[N, R, K]`` / ``[N, R, 1]`` layout, weight."""
        if "state" not in ctx.memo:
            fn = ctx.fn
            rows = self.rows(fn)
            mean = fn._saved_result1.reshape(rows.n, rows.r, 1)
            scale = fn._saved_result2.reshape(rows.n, rows.r, 1)
            xhat = (rows.split(fn._saved_input.unsqueeze(0))[0] - mean) * scale
            weight = fn._saved_weight
            if weight is not None:
                weight = rows.split(rows.weight_view(weight).expand(rows.shape)[None])
                weight = weight[0]
            ctx.memo["state"] = rows, xhat, scale, weight
        return ctx.memo["state"]

    def pullback(self, ctx, block, pos):
        rows, xhat, scale, weight = self._state(ctx)
        block = _dense_unless_per_sample(block, rows)
        if pos == 0:
            return self._through_xhat(ctx, block, weight)
        data = block.data
        if pos == 1:
            data = rows.join(rows.split(data) * xhat)
        return _to_affine(
            type(block)(data, block.sign), rows, tuple(ctx.in_shapes[pos])
        )

    def _through_xhat(self, ctx, block: Columns, weight) -> Columns:
        """Columns at ``y`` pulled back to ``x``: times ``w``, then ``J^T``."""
        rows, xhat, scale, _ = self._state(ctx)
        u = rows.split(block.data)
        if weight is not None:
            u = u * weight
        k = rows.k
        dx = scale * (
            u - u.sum(-1, keepdim=True) / k - xhat * (u * xhat).sum(-1, True) / k
        )
        return type(block)(rows.join(dx), block.sign)

    def residual(self, ctx):
        if not ctx.flows(0):
            return {}
        own = self._own_term(ctx)
        if not (ctx.flows(1) and ctx.coupled(0, 1)):
            return {0: own}
        return self._with_weight_input_cross(ctx, own)

    def _with_weight_input_cross(self, ctx, own: Columns) -> dict[int, Columns]:
        """``own`` at ``x`` (zero at ``w``), then the w-x cross term's columns."""
        rows = self._state(ctx)[0]
        x_shape, w_shape = tuple(ctx.in_shapes[0]), tuple(ctx.in_shapes[1])
        units = diagonal_columns(ctx.grad.expand(rows.shape))  # sqrt|g_e| e
        if units is None:
            return {0: own}
        units = units.to_dense(rows.shape)
        at_x = self._through_xhat(ctx, units, None)
        at_w = _to_affine(units, rows, w_shape)
        at_x, at_w = cross_pair(at_x, at_w)
        own = own.to_dense(x_shape)
        zeros = own.data.new_zeros(own.count, *w_shape)
        sign = torch.cat([own.sign, at_x.sign])
        return {
            0: DenseColumns(torch.cat([own.data, at_x.data]), sign),
            1: DenseColumns(torch.cat([zeros, at_w.data]), sign),
        }

    def _own_term(self, ctx) -> Columns:
        """``sum_j h_j d^2 xhat_j / dx^2`` as ``K + 2`` columns per row."""
        rows, a, size, (pair, pair_sign) = self._curvature(ctx)
        k = rows.k
        # -a Q: the columns Q e_i (Q Q^T = Q), all mean-free like the rest
        eye = torch.eye(k, dtype=pair.dtype, device=pair.device)
        centred = (size * a.abs()).sqrt().unsqueeze(-1) * (eye - 1 / k)
        factors = torch.cat([centred, pair], dim=2)  # [N, R, K + 2, K]
        signs = torch.cat([(-a.sign()).expand(*a.shape[:2], k), pair_sign], -1)
        if self._per_token(rows):
            return row_columns(factors, signs, rows.shape, 2)
        return RowColumns(factors, signs, rows.join, rows.per_sample)

    def _curvature(self, ctx: OpContext):
        """The op's own term per row, as ``-a s^2 / K`` times ``Q`` plus columns.

        Returns rows, ``a`` (``[N, R, 1]``), ``s^2 / K`` and the two columns
        along ``xhat`` and ``h~`` (``[N, R, 2, K]``, signs ``[N, R, 2]``).
        """
        rows, xhat, s, weight = self._state(ctx)
        h = rows.split(ctx.grad.expand(rows.shape).unsqueeze(0))[0]
        if weight is not None:
            h = h * weight
        k = rows.k
        a = (h * xhat).sum(-1, keepdim=True)  # [N, R, 1]
        h_centred = h - h.mean(-1, keepdim=True)
        # on the unit vectors p, q along xhat, h~: the symmetric 2x2 form
        # [[3a/K |p|^2, -|p||q|], [-|p||q|, 0]] by its eigenvectors
        p_norm = xhat.norm(dim=-1, keepdim=True)
        q_norm = h_centred.norm(dim=-1, keepdim=True)
        tiny = torch.finfo(xhat.dtype).tiny
        p = xhat / p_norm.clamp_min(tiny)
        q = h_centred / q_norm.clamp_min(tiny)
        alpha, beta = 3 * a / k * p_norm**2, -p_norm * q_norm
        spread = (alpha**2 / 4 + beta**2).sqrt()
        factors, signs = [], []
        for lam in (alpha / 2 + spread, alpha / 2 - spread):
            length = (lam**2 + beta**2).sqrt().clamp_min(tiny)
            size = s * (lam.abs() / k).sqrt() / length
            factors.append(size * (lam * p + beta * q))
            signs.append(lam.sign())
        pair = torch.stack(factors, dim=2), torch.cat(signs, dim=-1)
        return rows, a, s**2 / k, pair

    def _per_token(self, rows: _Rows) -> bool:
        """Are the rows the tokens of a ``[B, L, K]`` value?"""
        return False

    def accept(self, ctx, block):
        if isinstance(block, TokenColumns) and self._per_token(self.rows(ctx.fn)):
            return block
        return super().accept(ctx, block)


class LayerNorm(_Normalization):
    """NativeLayerNormBackward0 (``nn.LayerNorm``, ``F.layer_norm``)."""

    def _per_token(self, rows):
        return len(rows.shape) == 3 and rows.r == rows.shape[1]

    def rows(self, fn):
        return _layer_norm_rows(fn)


class GroupNorm(_Normalization):
    """NativeGroupNormBackward0 (``nn.GroupNorm``, ``F.group_norm``)."""

    def rows(self, fn):
        return _group_norm_rows(fn)


class BatchNorm(_Normalization):
    """NativeBatchNormBackward0 (``nn.BatchNorm1d/2d/3d``, ``F.batch_norm``).

    In training mode (batch statistics) a row is a channel over the batch, so
    columns pulled back through it are dense (one per column and sample); its
    own curvature is a per-sample diagonal plus three dense columns per
    channel (:meth:`residual`). In eval mode (running statistics) it is the per-channel
    affine map ``w (x - running_mean) / sqrt(running_var + eps) + b``: linear
    in ``x``, columns stay per sample, no residual.
    """

    weight_input_cross = False

    def rows(self, fn):
        return _batch_norm_rows(fn)

    def mixes_samples(self, fn):
        return bool(fn._saved_training)

    def _state(self, ctx):
        fn = ctx.fn
        if fn._saved_training or "state" in ctx.memo:
            return super()._state(ctx)
        rows = _batch_norm_rows(fn)
        view = [1] * len(rows.shape)
        view[1] = rows.shape[1]
        scale = (fn._saved_running_var + fn._saved_eps).rsqrt().reshape(view)
        xhat = (fn._saved_input - fn._saved_running_mean.reshape(view)) * scale
        ctx.memo["state"] = rows, xhat, scale, fn._saved_weight
        return ctx.memo["state"]

    def _channels(self, ctx) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training mode: xhat as ``[N, C, L]``, ``s`` and ``w s`` as ``[C, 1]``."""
        if "channels" not in ctx.memo:
            fn = ctx.fn
            x = fn._saved_input
            n, c = x.shape[:2]
            scale = fn._saved_result2.reshape(c, 1)
            xhat = (x.reshape(n, c, -1) - fn._saved_result1.reshape(c, 1)) * scale
            weight = fn._saved_weight
            gain = scale if weight is None else scale * weight.reshape(c, 1)
            ctx.memo["channels"] = xhat, scale, gain
        return ctx.memo["channels"]

    def _training_pullback(self, ctx, block, pos):
        """``s w (v - mean(v) - xhat mean(v xhat))`` per channel, on the
        columns as ``[C, N, channels, L]`` (no permutes); per-sample columns
        come out dense, one per (column, sample): the means mix the samples."""
        xhat, _, gain = self._channels(ctx)
        n, c, length = xhat.shape
        shape = tuple(ctx.out_shape)
        if isinstance(block, OuterColumns):
            block = block.to_dense(shape)
        per_sample = isinstance(block, SampleColumns)
        # sample-major, as every layout writes its columns out
        sign = block.sign.T.reshape(-1) if per_sample else block.sign
        v = block.data.reshape(block.data.shape[0], n, c, length)

        def per_channel(t: torch.Tensor) -> torch.Tensor:
            """Sums over a column's entries in each channel (last dim first:
            contiguous reductions are the fast ones)."""
            t = t.sum(-1, keepdim=True)
            return t if per_sample else t.sum(1, keepdim=True)

        def columns(t: torch.Tensor, *shape: int) -> DenseColumns:
            """``[C, N (column), ...]`` per-sample columns, sample-major."""
            t = t.movedim(1, 0) if per_sample else t
            return DenseColumns(t.reshape(-1, *shape), sign)

        if pos == 1:
            return columns(per_channel(v * xhat), c)
        if pos == 2:
            return columns(per_channel(v), c)
        total = n * length
        mean = per_channel(v) / total
        along = per_channel(v * xhat) / total
        if per_sample:  # [C, N (column), N (sample), channels, L]
            out = torch.addcmul(mean.unsqueeze(2), xhat, along.unsqueeze(2)).neg_()
            out.diagonal(0, 1, 2).add_(v.permute(0, 2, 3, 1))  # own sample
        else:
            out = torch.addcmul(v - mean, xhat, along, value=-1)
        out.mul_(gain)
        return columns(out, *shape)

    def pullback(self, ctx, block, pos):
        if ctx.fn._saved_training:
            return self._training_pullback(ctx, block, pos)
        rows, xhat, scale, weight = self._state(ctx)
        if isinstance(block, OuterColumns):
            block = block.to_dense(rows.shape)
        if pos == 0:
            factor = scale if weight is None else scale * rows.weight_view(weight)
            return type(block)(block.data * factor, block.sign)
        data = block.data * xhat if pos == 1 else block.data
        return _to_affine(
            type(block)(data, block.sign), rows, tuple(ctx.in_shapes[pos])
        )

    def residual(self, ctx):
        """Training mode: ``-a s^2 / K Q`` (``Q`` centres a channel over the
        batch) as the same multiple of ``Q_L``, which centres each sample's
        part (``L`` entries), in per-sample columns like an activation's, plus
        ``N`` dense columns for ``Q - Q_L`` (the samples' means centred), and
        the two along ``xhat`` and ``h~``: ``N + 2`` dense columns per channel
        instead of ``K + 2``, all mean-free as before."""
        if not ctx.fn._saved_training or not ctx.flows(0):
            return {}
        rows, a, size, (pair, pair_sign) = self._curvature(ctx)
        shape, channels = rows.shape, rows.r
        n = shape[0]
        length = rows.k // n
        weight = -a * size  # [1, C, 1]
        # Q - Q_L: columns (e_n - 1/N) (x) 1_L / sqrt(L), one per sample n
        centring = torch.eye(n, dtype=a.dtype, device=a.device) - 1 / n
        centring = centring.repeat_interleave(length, dim=1)  # [N, K]
        means = (weight.abs() / length).sqrt().unsqueeze(-1) * centring
        factors = torch.cat([means, pair], dim=2)
        signs = torch.cat([weight.sign().expand(1, channels, n), pair_sign], dim=-1)
        parts = [RowColumns(factors, signs, rows.join, False)]
        if length > 1:  # Q_L: zero for one entry per sample and channel
            diagonal = weight.reshape(1, channels, *[1] * (len(shape) - 2))
            parts.insert(0, DiagonalColumns(diagonal.expand(shape), length))
        return {0: ChainedColumns(parts, shape)}


register(LayerNorm(), "NativeLayerNormBackward0")
register(GroupNorm(), "NativeGroupNormBackward0")
register(BatchNorm(), "NativeBatchNormBackward0")
