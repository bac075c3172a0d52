"""Curvature rules for convolution, pooling and padding.

These ops act on each sample (and, for pooling and padding, each channel) on
its own and are linear in the input, or piecewise linear (max pooling), so
they have no second-order term of their own except the convolution's
input-weight cross term, which only matters when one parameter reaches both
(a kernel that also shapes its own input); that case has no rule. The
pullbacks run on all columns at once:

* convolution to its input: the transposed convolution
  (``torch.nn.grad.conv*d_input``) with the columns as the batch;
* convolution to its weight: per column and sample, the weight gradient
  ``sum_l v[o, l] x_unfolded[k, l]`` (a batched product over the unfolded
  input), so per-sample columns give per-sample weight columns, exactly;
  these, and dense columns' (samples and positions as one axis), stay lazy
  (:class:`.ProductColumns`) and are squared at the parameter a chunk at a
  time, or through a Gram matrix over the columns where that is cheaper;
* max pooling: a scatter of each column to the saved argmax indices;
* average pooling and upsampling (bilinear, nearest): torch's own backward
  with the columns as the batch.

Example:
    >>> import torch
    >>> from gradgraph.derivatives import propagated_hessian_diagonal
    >>> w = torch.ones(1, 1, 2, requires_grad=True)
    >>> x = torch.tensor([[[1.0, 2.0, 3.0]]])
    >>> propagated_hessian_diagonal((torch.conv1d(x, w) ** 2).sum(), w).round()
    tensor([[[10., 26.]]])
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..base import OpContext, Rule
from ..columns import (
    Columns,
    DenseColumns,
    OuterColumns,
    ProductColumns,
    SampleColumns,
    one_per_column,
)
from ..registry import register


def _by_column(
    block: Columns,
    out_shape: tuple,
    apply: Callable[[torch.Tensor], torch.Tensor],
) -> Columns:
    """A per-sample linear map applied to every column, all columns as one batch.

    ``apply`` maps ``[B, *out_shape[1:]]`` to ``[B, *in_shape[1:]]`` sample by
    sample, so it acts the same on per-sample columns (``data[c, n]`` is
    sample ``n``'s part) and on dense ones (``data[c]`` is a whole value).
    """
    if isinstance(block, OuterColumns):
        block = block.to_dense(out_shape)
    c, n = block.data.shape[:2]
    out = apply(block.data.reshape(c * n, *block.data.shape[2:]))
    return type(block)(out.reshape(c, n, *out.shape[1:]), block.sign)


def _per_channel(
    block: Columns,
    out_shape: tuple,
    in_shape: tuple,
    spatial: int,
    apply: Callable[[torch.Tensor, tuple], torch.Tensor],
) -> Columns:
    """A per-channel map: every leading dim (columns, samples, channels) as batch.

    ``apply(grad, in_size)`` gets ``[B, 1, *out_spatial]`` and the input size
    ``(B, 1, *in_spatial)``; batched and unbatched pooling look the same.
    """
    if isinstance(block, OuterColumns):
        block = block.to_dense(out_shape)
    data = block.data
    c = data.shape[0]
    grad = data.reshape(-1, 1, *out_shape[len(out_shape) - spatial :])
    in_spatial = tuple(in_shape[len(in_shape) - spatial :])
    out = apply(grad, (grad.shape[0], 1, *in_spatial))
    return type(block)(out.reshape(c, *in_shape), block.sign)


class Convolution(Rule):
    """ConvolutionBackward0 (Conv1d/2d/3d; any stride, padding, dilation, groups).

    Linear in the input and in the weight, so no residual; refuses a kernel
    that also shapes its own input (the input-weight cross term). A
    transposed convolution goes to its input by the plain convolution (its
    adjoint) and to its weight by per-(column, sample) VJPs (``torch.func``).
    """

    def refuses(self, fn, flows, coupled):
        if len(flows) > 1 and flows[0] and flows[1] and coupled(0, 1):
            return "ConvolutionBackward0 (a kernel that also shapes its own input)"
        return None

    def pullback(self, ctx, block, pos):
        transposed = ctx.fn._saved_transposed
        if pos == 0:
            if transposed:
                return _by_column(block, ctx.out_shape, self._settings(ctx, False))
            return self._to_input(ctx, block)
        if isinstance(block, OuterColumns):
            block = block.to_dense(ctx.out_shape)
        if pos == 1 and transposed:
            return self._to_transposed_weight(ctx, block)
        if pos == 1:
            return self._to_weight(ctx, block)
        spatial = tuple(range(3, block.data.dim()))  # bias: sum over positions
        if isinstance(block, SampleColumns):
            return one_per_column(block.data.sum(spatial), block.sign)
        return DenseColumns(block.data.sum((1, *spatial)), block.sign)

    @staticmethod
    def _settings(ctx: OpContext, transposed: bool, weight=None):
        """The node's convolution (or, ``transposed=False``, its adjoint) as a
        function of the input (and of the weight, when ``weight`` is None)."""
        fn = ctx.fn
        padding = [0] * len(fn._saved_stride)
        extra = fn._saved_output_padding if transposed else padding

        def conv(x, w=weight):
            return torch.ops.aten.convolution(
                x,
                fn._saved_weight if w is None else w,
                None,
                fn._saved_stride,
                fn._saved_padding,
                fn._saved_dilation,
                transposed,
                extra,
                fn._saved_groups,
            )

        return conv

    def _to_transposed_weight(self, ctx: OpContext, block: Columns) -> Columns:
        """Per column and sample: the VJP of the weight, all of them by vmap."""
        x = ctx.fn._saved_input
        conv = self._settings(ctx, True)
        weight = ctx.fn._saved_weight
        c, n = block.data.shape[:2]

        def one(v, x_n):  # one sample's part of one column
            def of_weight(w):
                return conv(x_n.unsqueeze(0), w)

            return torch.func.vjp(of_weight, weight)[1](v.unsqueeze(0))[0]

        v = block.data.reshape(c * n, *block.data.shape[2:])
        grads = torch.vmap(one)(v, x.repeat(c, *[1] * (x.dim() - 1)))
        grads = grads.reshape(c, n, *weight.shape)
        if isinstance(block, SampleColumns):
            return one_per_column(grads, block.sign)
        return DenseColumns(grads.sum(1), block.sign)

    def _to_input(self, ctx: OpContext, block: Columns) -> Columns:
        fn = ctx.fn
        weight = fn._saved_weight
        grad_input = {
            3: torch.nn.grad.conv1d_input,
            4: torch.nn.grad.conv2d_input,
            5: torch.nn.grad.conv3d_input,
        }[weight.dim()]
        in_shape = ctx.in_shapes[0]

        def apply(v):
            return grad_input(
                (v.shape[0], *in_shape[1:]),
                weight,
                v,
                fn._saved_stride,
                fn._saved_padding,
                fn._saved_dilation,
                fn._saved_groups,
            )

        return _by_column(block, ctx.out_shape, apply)

    def _unfolded(self, ctx: OpContext) -> torch.Tensor:
        """The input as ``[N, groups, Cin/groups * kernel, positions]`` (im2col)."""
        if "unfolded" not in ctx.memo:
            fn = ctx.fn
            x, weight = fn._saved_input, fn._saved_weight
            spatial = weight.dim() - 2
            pad = [p for p in reversed(fn._saved_padding) for _ in range(2)]
            windows = F.pad(x, pad)
            settings = zip(
                weight.shape[2:], fn._saved_stride, fn._saved_dilation, strict=True
            )
            for i, (k, stride, dilation) in enumerate(settings):
                span = dilation * (k - 1) + 1  # each window is a new last dim
                windows = windows.unfold(2 + i, span, stride)[..., ::dilation]
            # [N, Cin, *positions, *kernel] -> [N, Cin * kernel, positions]
            order = [0, 1, *range(2 + spatial, 2 + 2 * spatial), *range(2, 2 + spatial)]
            windows = windows.permute(order)
            n, groups = x.shape[0], fn._saved_groups
            positions = torch.Size(windows.shape[2 + spatial :]).numel()
            ctx.memo["unfolded"] = windows.reshape(n, groups, -1, positions)
        return ctx.memo["unfolded"]

    def _to_weight(self, ctx: OpContext, block: Columns) -> Columns:
        """Per column (and sample): ``dW[o, k] = sum_l v[o, l] x_unfolded[k, l]``."""
        unfolded = self._unfolded(ctx)
        weight_shape = tuple(ctx.fn._saved_weight.shape)
        _, groups, _, positions = unfolded.shape
        c, n = block.data.shape[:2]
        v = block.data.reshape(c, n, groups, -1, positions)
        if isinstance(block, SampleColumns):  # squared and summed lazily
            return ProductColumns(v, unfolded, block.sign, weight_shape)
        # a dense column sums over the samples: the samples join the positions
        v = v.permute(0, 2, 3, 1, 4).reshape(c, 1, groups, -1, n * positions)
        both = unfolded.permute(1, 2, 0, 3).reshape(1, groups, -1, n * positions)
        return ProductColumns(v, both, block.sign.reshape(c, 1), weight_shape)


class MaxPool(Rule):
    """MaxPool{2,3}DWithIndicesBackward0: each output copies one input entry.

    Piecewise linear, so no residual; the columns scatter (and add, where
    windows overlap) to the argmax positions the node saved. Over a ReLU
    (``ctx.mask_input``) the ReLU's 0/1 derivative is applied here, on
    the pooled columns, which are smaller than the ReLU's.
    """

    takes_input_mask = True

    def pullback(self, ctx, block, pos):
        if isinstance(block, OuterColumns):
            block = block.to_dense(ctx.out_shape)
        indices = ctx.fn._saved_result1
        spatial = len(ctx.fn._saved_kernel_size)
        in_shape = ctx.in_shapes[0]
        lead = in_shape[: len(in_shape) - spatial]
        data = block.data.reshape(block.data.shape[0], *lead, -1)
        if ctx.mask_input:  # the ReLU below passes on what arrives
            data = data * self._relu_mask(ctx, lead)
        index = indices.reshape(1, *lead, -1).expand_as(data)
        out = data.new_zeros(
            *data.shape[:-1], torch.Size(in_shape[len(lead) :]).numel()
        )
        out.scatter_add_(-1, index, data)
        return type(block)(out.reshape(data.shape[0], *in_shape), block.sign)

    @staticmethod
    def _relu_mask(ctx: OpContext, lead: tuple) -> torch.Tensor:
        """The ReLU's derivative at each window's maximum (its output > 0)."""
        if "relu_mask" not in ctx.memo:
            x = ctx.fn._saved_self.reshape(*lead, -1)  # the ReLU's output
            index = ctx.fn._saved_result1.reshape(*lead, -1)
            ctx.memo["relu_mask"] = (x.gather(-1, index) > 0).to(x.dtype)
        return ctx.memo["relu_mask"]


class AvgPool(Rule):
    """AvgPool{2,3}DBackward0: a fixed average per window (torch's backward)."""

    def __init__(self, backward: Callable[..., torch.Tensor], spatial: int):
        self.backward, self.spatial = backward, spatial

    def pullback(self, ctx, block, pos):
        fn = ctx.fn
        x = fn._saved_self

        def apply(grad, in_size):
            return self.backward(
                grad,
                x.new_empty(()).expand(in_size),  # only its size is read
                fn._saved_kernel_size,
                fn._saved_stride,
                fn._saved_padding,
                fn._saved_ceil_mode,
                fn._saved_count_include_pad,
                fn._saved_divisor_override,
            )

        return _per_channel(block, ctx.out_shape, ctx.in_shapes[0], self.spatial, apply)


class AdaptiveAvgPool(Rule):
    """AdaptiveAvgPool{2,3}DBackward0: averages over computed windows."""

    def __init__(self, backward: Callable[..., torch.Tensor], spatial: int):
        self.backward, self.spatial = backward, spatial

    def pullback(self, ctx, block, pos):
        x = ctx.fn._saved_self

        def apply(grad, in_size):
            return self.backward(grad, x.new_empty(()).expand(in_size))

        return _per_channel(block, ctx.out_shape, ctx.in_shapes[0], self.spatial, apply)


class ConstantPad(Rule):
    """ConstantPadNdBackward0 (``F.pad``, ``padding="same"``): crop the columns."""

    def pullback(self, ctx, block, pos):
        pad = list(ctx.fn._saved_pad)
        if isinstance(block, OuterColumns) or (
            isinstance(block, SampleColumns) and len(pad) // 2 >= len(ctx.out_shape)
        ):  # padding the sample dim mixes samples
            block = block.to_dense(ctx.out_shape)
        return type(block)(F.pad(block.data, [-p for p in pad]), block.sign)


class Upsample(Rule):
    """Upsample{Bilinear,Nearest}2DBackward0 (``F.interpolate``): linear per sample.

    ``backward(grad, output_size, input_size, *options)`` is torch's own;
    ``options`` name the saved settings it takes after the sizes.
    """

    def __init__(self, backward: Callable[..., torch.Tensor], *options: str):
        self.backward, self.options = backward, options

    def pullback(self, ctx, block, pos):
        fn, in_shape = ctx.fn, ctx.in_shapes[0]
        settings = [getattr(fn, f"_saved_{name}") for name in self.options]

        def apply(v):
            size = (v.shape[0], *in_shape[1:])
            return self.backward(v, list(ctx.out_shape[2:]), size, *settings)

        return _by_column(block, ctx.out_shape, apply)


register(Convolution(), "ConvolutionBackward0")
register(MaxPool(), "MaxPool2DWithIndicesBackward0", "MaxPool3DWithIndicesBackward0")
register(AvgPool(torch.ops.aten.avg_pool2d_backward, 2), "AvgPool2DBackward0")
register(AvgPool(torch.ops.aten.avg_pool3d_backward, 3), "AvgPool3DBackward0")
register(
    AdaptiveAvgPool(torch.ops.aten._adaptive_avg_pool2d_backward, 2),
    "AdaptiveAvgPool2DBackward0",
)
register(
    AdaptiveAvgPool(torch.ops.aten._adaptive_avg_pool3d_backward, 3),
    "AdaptiveAvgPool3DBackward0",
)
register(ConstantPad(), "ConstantPadNdBackward0")
register(
    Upsample(
        torch.ops.aten.upsample_bilinear2d_backward,
        "align_corners",
        "scales_h",
        "scales_w",
    ),
    "UpsampleBilinear2DBackward0",
)
register(
    Upsample(torch.ops.aten.upsample_nearest2d_backward, "scales_h", "scales_w"),
    "UpsampleNearest2DBackward0",
)
