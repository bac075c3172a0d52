"""BatchNorm in training mode: its structured curvature against the dense Hessian.

The rule writes the op's own term as a per-sample diagonal plus three dense
columns per channel (:class:`ChainedColumns`). Each small net below is checked
in float64 against the dense Hessian's diagonal, once with the columns as one
block and once in slices of one column (which cross the diagonal/dense seam).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from gradgraph.derivatives.propagation import engine

from .model_reference import assert_propagates_exactly

F = nn.functional


class Block(nn.Module):
    """A ResNet basic block: the second BatchNorm's output meets a skip."""

    def __init__(self, channels=2):
        super().__init__()
        self.stem = nn.Conv2d(1, channels, 3, padding=1, bias=False)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.norm1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.norm2 = nn.BatchNorm2d(channels)
        self.head = nn.Linear(channels * 9, 3)

    def forward(self, x):
        h = self.stem(x)
        out = F.relu(self.norm1(self.conv1(h)))
        out = F.relu(self.norm2(self.conv2(out)) + h)
        return self.head(out.flatten(1))


def conv_bn(*norms, act=nn.ReLU, bias=False):
    """Conv -> BatchNorm(train) -> act, once per norm, then a linear head."""
    layers, channels = [], 1
    for norm in norms:
        layers += [nn.Conv2d(channels, norm.num_features, 2, bias=bias), norm, act()]
        channels = norm.num_features
    return nn.Sequential(*layers, nn.Flatten(), nn.LazyLinear(3))


def mlp(norm, act=nn.Tanh):
    return nn.Sequential(nn.Linear(4, 5), norm, act(), nn.Linear(5, 3))


MODELS = {  # name -> (make, input shape)
    "conv_bn_relu_twice_batch_2": (
        lambda: conv_bn(nn.BatchNorm2d(3), nn.BatchNorm2d(2)),
        (2, 1, 4, 4),
    ),
    "conv_bn_tanh_batch_3_bias": (
        lambda: conv_bn(nn.BatchNorm2d(2), act=nn.Tanh, bias=True),
        (3, 1, 3, 3),
    ),
    "conv_bn_no_affine_no_running_stats": (
        lambda: conv_bn(
            nn.BatchNorm2d(2, affine=False, track_running_stats=False), act=nn.Tanh
        ),
        (2, 1, 3, 4),
    ),
    "batch_norm_1d_eps_batch_3": (lambda: mlp(nn.BatchNorm1d(5, eps=0.3)), (3, 4)),
    "batch_norm_1d_batch_2": (lambda: mlp(nn.BatchNorm1d(5), nn.ReLU), (2, 4)),
    "batch_norm_1d_no_affine": (
        lambda: mlp(nn.BatchNorm1d(5, affine=False, track_running_stats=False)),
        (3, 4),
    ),
    "skip_after_batch_norm": (Block, (2, 1, 3, 3)),
}


def mse(out):
    return F.mse_loss(out, torch.linspace(-1.0, 1.0, out.numel()).reshape(out.shape))


def build(name):
    make, shape = MODELS[name]
    torch.manual_seed(0)
    model = make().double().train()
    x = torch.randn(shape, dtype=torch.float64)
    model(x)  # materialise lazy layers
    for module in model.modules():  # affine away from 1 and 0
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.affine:
            nn.init.normal_(module.weight)
            nn.init.normal_(module.bias)
    return model, x


@pytest.mark.parametrize("sliced", [False, True], ids=["whole", "sliced"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_batch_norm_training_diagonal_is_exact(name, sliced, monkeypatch):
    model, x = build(name)
    drained = []
    if sliced:  # every column its own slice, across the diagonal/dense seam
        monkeypatch.setattr(engine, "CHUNK_BYTES", 1)
        monkeypatch.setattr(engine, "DRAIN_BYTES", 1)
        call = engine._Drain.__call__

        def counted(self, start):
            drained.append(start)
            return call(self, start)

        monkeypatch.setattr(engine._Drain, "__call__", counted)
    assert_propagates_exactly(model, mse, x, "NativeBatchNormBackward0")
    if sliced:
        assert drained
