"""Small float64 models for the derivative tests: each gives (model, loss_fn, inputs).

``loss_fn(model(inputs))`` is a scalar. Every builder seeds torch, so repeated
calls give the same weights and data. ``ModelCase.unused`` says whether some
parameter does not reach the loss (derivative functions then need
``allow_unused=True``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

DTYPE = torch.float64


@dataclass
class ModelCase:
    model: nn.Module
    loss_fn: Callable[[torch.Tensor], torch.Tensor]
    inputs: torch.Tensor
    unused: bool = False

    def loss(self) -> torch.Tensor:
        """A fresh loss with its own graph."""
        return self.loss_fn(self.model(self.inputs))


def _mlp(sizes: list[int], act: type[nn.Module]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:], strict=True):
        layers += [nn.Linear(a, b), act()]
    return nn.Sequential(*layers[:-1]).to(DTYPE)


def _regression(model: nn.Module, inputs: torch.Tensor, unused=False) -> ModelCase:
    with torch.no_grad():
        target = torch.sin(model(inputs) * 3) + 0.1
    torch.manual_seed(1)
    target = target + 0.3 * torch.randn_like(target)
    return ModelCase(model, lambda out: F.mse_loss(out, target), inputs, unused)


def seed_simple_net() -> ModelCase:
    """The seed notebook's SimpleNet: 1-10-10-1 Tanh, MSE against sin(x)."""
    torch.manual_seed(0)
    model = _mlp([1, 10, 10, 1], nn.Tanh)
    x = torch.linspace(-2, 2, 20, dtype=DTYPE).view(-1, 1)
    y = torch.sin(x)
    return ModelCase(model, lambda out: F.mse_loss(out, y), x)


def relu_mlp() -> ModelCase:
    torch.manual_seed(0)
    return _regression(_mlp([3, 6, 5, 2], nn.ReLU), torch.randn(12, 3, dtype=DTYPE))


def gelu_mlp() -> ModelCase:
    torch.manual_seed(0)
    return _regression(_mlp([3, 6, 5, 1], nn.GELU), torch.randn(12, 3, dtype=DTYPE))


def silu_mlp() -> ModelCase:
    torch.manual_seed(0)
    return _regression(_mlp([2, 7, 4, 2], nn.SiLU), torch.randn(12, 2, dtype=DTYPE))


class Residual(nn.Module):
    """x + tanh(W2 tanh(W1 x)), then a head: a skip connection, not Sequential."""

    def __init__(self):
        super().__init__()
        self.inner = nn.Linear(3, 4)
        self.outer = nn.Linear(4, 3)
        self.head = nn.Linear(3, 1)

    def forward(self, x):
        h = x + torch.tanh(self.outer(torch.tanh(self.inner(x))))
        return self.head(h * torch.sigmoid(h))


def residual_net() -> ModelCase:
    torch.manual_seed(0)
    return _regression(Residual().to(DTYPE), torch.randn(10, 3, dtype=DTYPE))


def conv_net() -> ModelCase:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3),
        nn.Tanh(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(2 * 2 * 2, 2),
    ).to(DTYPE)
    return _regression(model, torch.randn(4, 1, 6, 6, dtype=DTYPE))


def cross_entropy() -> ModelCase:
    torch.manual_seed(0)
    model = _mlp([4, 6, 3], nn.Tanh)
    x = torch.randn(15, 4, dtype=DTYPE)
    labels = torch.randint(0, 3, (15,))
    return ModelCase(model, lambda out: F.cross_entropy(out, labels), x)


class Tied(nn.Module):
    """An autoencoder whose decoder is the encoder's transpose, applied twice."""

    def __init__(self):
        super().__init__()
        self.encode = nn.Linear(4, 3)
        self.bias_out = nn.Parameter(torch.zeros(4))

    def forward(self, x):
        for _ in range(2):  # the same weights on every pass
            x = F.linear(torch.tanh(self.encode(x)), self.encode.weight.T)
            x = x + self.bias_out
        return x


def tied_parameters() -> ModelCase:
    torch.manual_seed(0)
    model = Tied().to(DTYPE)
    x = torch.randn(8, 4, dtype=DTYPE)
    return ModelCase(model, lambda out: F.mse_loss(out, x.flip(1)), x)


class WithUnused(nn.Module):
    """A Tanh MLP with an extra parameter forward never touches."""

    def __init__(self):
        super().__init__()
        self.net = _mlp([2, 5, 1], nn.Tanh)
        self.spare = nn.Parameter(torch.ones(3, dtype=DTYPE))

    def forward(self, x):
        return self.net(x)


def unused_parameter() -> ModelCase:
    torch.manual_seed(0)
    model = WithUnused().to(DTYPE)
    case = _regression(model, torch.randn(9, 2, dtype=DTYPE), unused=True)
    return case


MODELS: dict[str, Callable[[], ModelCase]] = {
    f.__name__: f
    for f in [
        seed_simple_net,
        relu_mlp,
        gelu_mlp,
        silu_mlp,
        residual_net,
        conv_net,
        cross_entropy,
        tied_parameters,
        unused_parameter,
    ]
}
