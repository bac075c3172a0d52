"""Curvature rules for LayerNorm, GroupNorm and BatchNorm (eval and training).

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
    diagonal_method,
    ggn_diagonal,
    propagated_hessian_diagonal,
    unsupported_ops,
)

from .model_reference import assert_propagates_exactly
from .reference import dense_hessian

F = nn.functional
TOLERANCE = {"rtol": 1e-10, "atol": 1e-12}

torch.manual_seed(0)
X = torch.randn(4, 6, dtype=torch.float64)
TOKENS = torch.randn(3, 4, 6, dtype=torch.float64)  # batch, positions, features
IMAGES = torch.randn(3, 2, 4, 4, dtype=torch.float64)
LABELS = torch.tensor([0, 2, 1, 1])
TARGET = torch.randn(4, 3, dtype=torch.float64)


def cross_entropy(out):
    return F.cross_entropy(out, LABELS[: out.shape[0]])


def mse(out):
    return F.mse_loss(out, TARGET[: out.shape[0]])


class TransformerBlock(nn.Module):
    """Linear -> LayerNorm -> GELU -> Linear, with a residual around the last three."""

    def __init__(self, features=6, width=5):
        super().__init__()
        self.embed = nn.Linear(features, width)
        self.norm = nn.LayerNorm(width)
        self.mlp = nn.Linear(width, width)
        self.head = nn.Linear(width, 3)

    def forward(self, x):
        h = self.embed(x)
        h = h + self.mlp(F.gelu(self.norm(h)))
        return self.head(h)


class TokenBlock(TransformerBlock):
    """The block on a sequence: the head reads the mean over positions."""

    def forward(self, x):
        return super().forward(x).mean(1)


class WholeBatchLayerNorm(nn.Module):
    """layer_norm over every dim, the batch too (one row, dense columns)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(6, 4), nn.Linear(4, 3)
        self.weight = nn.Parameter(torch.linspace(-1.0, 2.0, 16).reshape(4, 4))

    def forward(self, x):
        h = self.a(x)
        return self.b(torch.tanh(F.layer_norm(h, tuple(h.shape), self.weight)))


def mlp(norm, act=nn.Tanh):
    return nn.Sequential(nn.Linear(6, 5), norm, act(), nn.Linear(5, 3))


def cnn(norm):
    return nn.Sequential(
        nn.Conv2d(2, 4, 3), norm, nn.Tanh(), nn.Flatten(), nn.Linear(16, 3)
    )


MODELS = {  # (make, loss, input, op it must exercise)
    "layer_norm_mse": (lambda: mlp(nn.LayerNorm(5)), mse, X),
    "layer_norm_no_affine_cross_entropy": (
        lambda: mlp(nn.LayerNorm(5, elementwise_affine=False)),
        cross_entropy,
        X,
    ),
    "layer_norm_no_bias": (lambda: mlp(nn.LayerNorm(5, bias=False), nn.GELU), mse, X),
    "layer_norm_two_dims": (
        lambda: nn.Sequential(
            nn.Linear(6, 5),
            nn.LayerNorm((4, 5)),
            nn.SiLU(),
            nn.Flatten(),
            nn.Linear(20, 3),
        ),
        mse,
        TOKENS,
    ),
    "layer_norm_whole_batch": (WholeBatchLayerNorm, mse, X),
    "transformer_block_cross_entropy": (TransformerBlock, cross_entropy, X),
    "transformer_block_mse": (TransformerBlock, mse, X),
    "transformer_block_tokens": (TokenBlock, cross_entropy, TOKENS),
    "group_norm": (lambda: cnn(nn.GroupNorm(2, 4)), cross_entropy, IMAGES),
    "group_norm_no_affine": (
        lambda: cnn(nn.GroupNorm(4, 4, affine=False)),
        mse,
        IMAGES,
    ),
    "batch_norm_2d_eval": (
        lambda: cnn(nn.BatchNorm2d(4)).eval(),
        cross_entropy,
        IMAGES,
    ),
    "batch_norm_1d_eval_no_affine": (
        lambda: mlp(nn.BatchNorm1d(5, affine=False)).eval(),
        mse,
        X,
    ),
    "batch_norm_2d_train": (lambda: cnn(nn.BatchNorm2d(4)), cross_entropy, IMAGES),
    "batch_norm_1d_train": (lambda: mlp(nn.BatchNorm1d(5)), mse, X),
    "batch_norm_train_no_running_stats": (
        lambda: mlp(nn.BatchNorm1d(5, affine=False, track_running_stats=False)),
        cross_entropy,
        X,
    ),
}

OPS = {
    "layer": "NativeLayerNormBackward0",
    "transformer": "NativeLayerNormBackward0",
    "group": "NativeGroupNormBackward0",
    "batch": "NativeBatchNormBackward0",
}


def build(case):
    make, loss_of_output, x = MODELS[case]
    torch.manual_seed(1)
    model = make().double()
    for module in model.modules():  # running statistics and affine away from 0 / 1
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            if module.running_mean is not None:
                module.running_mean.normal_()
                module.running_var.uniform_(0.5, 2.0)
        if isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)):
            if module.weight is not None:
                nn.init.normal_(module.weight)
                nn.init.normal_(module.bias)
        if isinstance(module, nn.LayerNorm) and module.weight is not None:
            nn.init.normal_(module.weight)
    return model, loss_of_output, x


def flat(result, model):
    return torch.cat([result[n].reshape(-1) for n, _ in model.named_parameters()])


@pytest.mark.parametrize("case", sorted(MODELS))
def test_exact_diagonal_by_propagation(case):
    model, loss_of_output, x = build(case)
    assert_propagates_exactly(model, loss_of_output, x, OPS[case.split("_")[0]])


def test_batch_norm_in_eval_mode_is_linear():
    """Eval-mode BatchNorm adds no curvature: with ReLU around it, GGN = Hessian."""
    model, _, x = build("batch_norm_2d_eval")
    model[2] = nn.ReLU()
    expected = dense_hessian(model, cross_entropy, x).diagonal()
    got = ggn_diagonal(cross_entropy(model(x)), model)
    torch.testing.assert_close(flat(got, model), expected, **TOLERANCE)


def test_layer_norm_of_a_parameter_itself():
    """The residual term alone: the input of layer_norm is the parameter."""
    torch.manual_seed(2)
    x0 = torch.randn(3, 5, dtype=torch.float64)
    weight = torch.randn(5, dtype=torch.float64)

    def f(x):
        return (F.layer_norm(x, (5,), weight) ** 3).sum()

    expected = torch.autograd.functional.hessian(f, x0).reshape(15, 15).diagonal()
    x = x0.clone().requires_grad_(True)
    got = propagated_hessian_diagonal(f(x), x)
    torch.testing.assert_close(got.reshape(-1), expected, **TOLERANCE)


class SharedNorm(nn.Module):
    """One norm layer applied twice: its weight also shapes its own input."""

    def __init__(self, norm: nn.Module):
        super().__init__()
        self.a, self.norm, self.b = nn.Linear(6, 5), norm, nn.Linear(5, 3)

    def forward(self, x):
        return self.b(self.norm(torch.tanh(self.norm(self.a(x)))))


@pytest.mark.parametrize("norm", [nn.LayerNorm(5), nn.GroupNorm(1, 5)])
def test_a_norm_weight_that_shapes_its_own_input_propagates(norm):
    """ALBERT's shared layers: the weight-input cross term (before: rows)."""
    torch.manual_seed(1)
    nn.init.normal_(norm.weight)
    model = SharedNorm(norm).double()
    assert unsupported_ops(mse(model(X)), model) == []
    assert_propagates_exactly(model, mse, X)


def test_a_batch_norm_weight_that_shapes_its_own_input_falls_back():
    torch.manual_seed(1)
    model = SharedNorm(nn.BatchNorm1d(5)).double()
    loss = mse(model(X))
    reason = "NativeBatchNormBackward0 (an affine weight that also shapes its input)"
    assert unsupported_ops(loss, model) == [reason]
    assert diagonal_method(loss, model) == "rows"
    with pytest.raises(UnsupportedOpError, match="also shapes its input"):
        hessian_diagonal(loss, model, method="propagate")
    expected = dense_hessian(model, mse, X).diagonal()
    auto = hessian_diagonal(mse(model(X)), model, progress=False)
    torch.testing.assert_close(flat(auto, model), expected, **TOLERANCE)
