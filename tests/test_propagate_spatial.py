"""Curvature rules for convolution, pooling, padding, softmax and division.

Every model is checked against the dense float64 Hessian (tests/reference.py)
and must take the propagation path, not the exact-rows fallback.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from gradgraph.derivatives import hessian_diagonal
from gradgraph.derivatives.propagation import (
    UnsupportedOpError,
    columns,
    diagonal_method,
    ggn_diagonal,
    propagated_hessian_diagonal,
    unsupported_ops,
)
from gradgraph.derivatives.propagation.columns import ProductColumns

from .model_reference import assert_propagates_exactly
from .reference import dense_hessian

F = nn.functional
TOLERANCE = {"rtol": 1e-10, "atol": 1e-12}

torch.manual_seed(0)
X = torch.randn(3, 2, 8, 8, dtype=torch.float64)
X1D = torch.randn(3, 2, 9, dtype=torch.float64)
X3D = torch.randn(3, 2, 5, 6, 5, dtype=torch.float64)
LABELS = torch.tensor([0, 2, 1])
TARGET = torch.randn(3, 3, dtype=torch.float64)


def cross_entropy(out):
    return F.cross_entropy(out, LABELS)


def mse(out):
    return F.mse_loss(out, TARGET)


def cnn():
    """Conv2d + ReLU + MaxPool + Flatten + Linear."""
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(48, 3),
    )


class ManualSoftmax(nn.Module):
    """A softmax written out: max along a dim, exp, and a division by a sum."""

    def __init__(self):
        super().__init__()
        self.conv, self.out = nn.Conv2d(2, 2, 3, stride=3), nn.Linear(8, 3)

    def forward(self, x):
        h = self.conv(x).flatten(1)
        h = h - h.max(-1, keepdim=True).values
        e = h.exp()
        return self.out(e / e.sum(-1, keepdim=True))


class Padded(nn.Module):
    """F.pad of a parameter-dependent input, as padding="same" does for even kernels."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(2, 3, 3)
        self.b = nn.Conv2d(3, 2, 2)
        self.out = nn.Linear(72, 3)

    def forward(self, x):
        h = F.pad(torch.tanh(self.a(x)), (0, 1, 1, 0), value=0.5)
        return self.out(self.b(h).flatten(1))


class ReluReadTwice(nn.Module):
    """One ReLU read by two max pools (its mask moves into both), or by a max
    pool and an average pool (the ReLU applies its own mask)."""

    def __init__(self, second_max: bool):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.out = nn.Linear(48, 3)
        self.second_max = second_max

    def forward(self, x):
        h = F.relu(self.conv(x))
        a = F.max_pool2d(h, 3, stride=2, padding=1)  # overlapping windows
        b = F.max_pool2d(h, 2) if self.second_max else F.avg_pool2d(h, 2)
        return self.out((a + b).flatten(1))


class SharedKernel(nn.Module):
    """One kernel in two convolutions, once scaled: its per-sample columns
    meet and pass a multiplication before they reach the parameter."""

    def __init__(self):
        super().__init__()
        self.kernel = nn.Parameter(torch.randn(3, 2, 3, 3) / 4)
        self.out = nn.Linear(48, 3)

    def forward(self, x):
        a = F.max_pool2d(torch.tanh(F.conv2d(x, self.kernel, padding=1)), 2)
        b = F.conv2d(x, 0.5 * self.kernel, stride=2, padding=1)
        return self.out((a + b).flatten(1))


MODELS = {
    "cnn_cross_entropy": (cnn, cross_entropy, X),
    "shared_kernel": (SharedKernel, cross_entropy, X),
    "relu_read_by_two_max_pools": (lambda: ReluReadTwice(True), cross_entropy, X),
    "relu_read_by_max_and_avg_pool": (lambda: ReluReadTwice(False), mse, X),
    "relu_maxpool3d": (
        lambda: nn.Sequential(
            nn.Conv3d(2, 2, 2, padding=1),
            nn.ReLU(),
            nn.MaxPool3d(2, stride=1),
            nn.Flatten(),
            nn.Linear(300, 3),
        ),
        cross_entropy,
        X3D,
    ),
    "cnn_mse": (cnn, mse, X),
    "stride_padding_dilation_groups": (
        lambda: nn.Sequential(
            nn.Conv2d(2, 4, 3, stride=2, padding=2, dilation=2, groups=2),
            nn.Tanh(),
            nn.Conv2d(4, 2, 2, bias=False),
            nn.Sigmoid(),
            nn.Flatten(),
            nn.Linear(18, 3),
        ),
        cross_entropy,
        X,
    ),
    "depthwise_overlapping_maxpool": (
        lambda: nn.Sequential(
            nn.Conv2d(2, 4, 3, groups=2),
            nn.GELU(),
            nn.MaxPool2d(3, stride=1, padding=1),
            nn.MaxPool2d(2, stride=2, dilation=2, ceil_mode=True),
            nn.Flatten(),
            nn.Linear(36, 3),
        ),
        mse,
        X,
    ),
    "avgpool_adaptive": (
        lambda: nn.Sequential(
            nn.Conv2d(2, 3, 3),
            nn.Tanh(),
            nn.AvgPool2d(2, stride=1, padding=1, count_include_pad=False),
            nn.AdaptiveAvgPool2d(3),
            nn.Flatten(),
            nn.Linear(27, 3),
        ),
        cross_entropy,
        X,
    ),
    "avgpool_global": (
        lambda: nn.Sequential(
            nn.Conv2d(2, 3, 3, padding=1),
            nn.SiLU(),
            nn.AvgPool2d(2, divisor_override=3),
            nn.Conv2d(3, 3, 1),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(3, 3),
        ),
        cross_entropy,
        X,
    ),
    "conv1d": (
        lambda: nn.Sequential(
            nn.Conv1d(2, 3, 3, stride=2, padding=1, dilation=2),
            nn.Tanh(),
            nn.MaxPool1d(2),
            nn.AvgPool1d(1),
            nn.Flatten(),
            nn.Linear(6, 3),
        ),
        cross_entropy,
        X1D,
    ),
    "conv3d": (
        lambda: nn.Sequential(
            nn.Conv3d(2, 2, (2, 3, 2), stride=(1, 2, 1), padding=1, dilation=(2, 1, 1)),
            nn.Tanh(),
            nn.MaxPool3d(2),
            nn.AvgPool3d(1),
            nn.AdaptiveAvgPool3d((2, 1, 2)),
            nn.Flatten(),
            nn.Linear(8, 3),
        ),
        mse,
        X3D,
    ),
    "padding": (Padded, mse, X),
    "softmax_inside": (
        lambda: nn.Sequential(
            nn.Conv2d(2, 3, 3, stride=2),
            nn.Softmax(dim=1),
            nn.Flatten(),
            nn.Linear(27, 3),
            nn.Softmax(dim=-1),
            nn.Linear(3, 3),
        ),
        mse,
        X,
    ),
    "log_softmax_over_channels": (
        lambda: nn.Sequential(
            nn.Conv2d(2, 3, 3, stride=2),
            nn.LogSoftmax(dim=1),
            nn.Flatten(),
            nn.Linear(27, 3),
        ),
        mse,
        X,
    ),
    "manual_softmax": (ManualSoftmax, cross_entropy, X),
}

OPS = {  # an op each model must exercise
    "cnn_cross_entropy": "MaxPool2DWithIndicesBackward0",
    "stride_padding_dilation_groups": "ConvolutionBackward0",
    "avgpool_adaptive": "AdaptiveAvgPool2DBackward0",
    "avgpool_global": "AvgPool2DBackward0",
    "padding": "ConstantPadNdBackward0",
    "conv3d": "AdaptiveAvgPool3DBackward0",
    "softmax_inside": "SoftmaxBackward0",
    "log_softmax_over_channels": "LogSoftmaxBackward0",
    "manual_softmax": "DivBackward0",
}


def build(case):
    make, loss_of_output, x = MODELS[case]
    torch.manual_seed(1)
    return make().double(), loss_of_output, x


def flat(result, model):
    return torch.cat([result[n].reshape(-1) for n, _ in model.named_parameters()])


@pytest.mark.parametrize("case", sorted(MODELS))
def test_exact_diagonal_by_propagation(case):
    model, loss_of_output, x = build(case)
    assert_propagates_exactly(model, loss_of_output, x, OPS.get(case))


def test_ggn_diagonal_of_a_cnn():
    """ReLU, max pooling and convolution are piecewise linear: GGN = Hessian."""
    model, loss_of_output, x = build("cnn_cross_entropy")
    expected = dense_hessian(model, loss_of_output, x).diagonal()
    got = ggn_diagonal(loss_of_output(model(x)), model)
    torch.testing.assert_close(flat(got, model), expected, **TOLERANCE)


def test_the_input_of_a_convolution_as_a_parameter():
    torch.manual_seed(2)
    weight = torch.randn(3, 2, 3, 3, dtype=torch.float64)
    x = X[:1].clone().requires_grad_(True)

    def f(x):
        return F.max_pool2d(torch.tanh(F.conv2d(x, weight, padding=1)), 2).pow(2).sum()

    expected = torch.autograd.functional.hessian(f, X[:1]).reshape(128, 128)
    got = propagated_hessian_diagonal(f(x), x)
    torch.testing.assert_close(got.reshape(-1), expected.diagonal(), **TOLERANCE)


def test_a_kernel_applied_to_its_own_output_falls_back():
    conv = nn.Conv2d(2, 2, 3, padding=1).double()
    model = nn.Sequential(conv, nn.Tanh(), conv, nn.Flatten(), nn.Linear(128, 3))
    model = model.double()
    loss = cross_entropy(model(X))
    assert unsupported_ops(loss, model) == [
        "ConvolutionBackward0 (a kernel that also shapes its own input)"
    ]
    assert diagonal_method(loss, model) == "rows"
    with pytest.raises(UnsupportedOpError, match="shapes its own input"):
        hessian_diagonal(loss, model, method="propagate")
    expected = dense_hessian(model, cross_entropy, X).diagonal()
    auto = hessian_diagonal(cross_entropy(model(X)), model, progress=False)
    torch.testing.assert_close(flat(auto, model), expected, **TOLERANCE)


@pytest.mark.parametrize("groups", [1, 2])
def test_a_transposed_convolution_propagates(groups):
    """A decoder's upsampling: ConvTranspose2d (before: no rule, rows)."""
    torch.manual_seed(0)
    up = nn.ConvTranspose2d(2, 4, 3, stride=2, padding=1, output_padding=1)
    if groups == 2:
        up = nn.ConvTranspose2d(2, 4, 2, stride=2, groups=2, dilation=2)
    head = [nn.Conv2d(4, 1, 3), nn.AdaptiveAvgPool2d(3), nn.Flatten(), nn.Linear(9, 3)]
    model = nn.Sequential(up, nn.Tanh(), *head).double()
    assert_propagates_exactly(model, mse, X[:, :, :4, :4], "ConvolutionBackward0")


@pytest.mark.parametrize("samples", [1, 3], ids=["dense", "per_sample"])
def test_weight_columns_square_alike_by_both_routes(samples, monkeypatch):
    """A convolution's weight columns, squared through the Gram matrix over the
    columns and one chunk of columns at a time, equal their written-out squares."""
    torch.manual_seed(0)
    c, groups, out, k, positions = 5, 2, 3, 4, 6
    left = torch.randn(c, samples, groups, out, positions, dtype=torch.float64)
    right = torch.randn(samples, groups, k, positions, dtype=torch.float64)
    sign = torch.randint(0, 2, (c, samples)).double() - 0.5
    block = ProductColumns(left, right, sign, (groups * out, k))
    dense = block.to_dense(block.shape)
    expected = torch.einsum("c,cok->ok", dense.sign, dense.data.square())
    monkeypatch.setattr(columns, "_PRODUCT_CHUNK", 7)  # a column per chunk
    monkeypatch.setattr(columns, "_GRAM_LIMIT", 200)  # a sample at a time
    for route in (block._gram_square_sum, block._direct_square_sum):
        torch.testing.assert_close(route().reshape(block.shape), expected)
    torch.testing.assert_close(block.square_sum(), expected)
