"""Graphs that tests trace: each builder returns (outputs, names dict for trace).

Every builder seeds torch so repeated calls build the same graph.
"""

from __future__ import annotations

import torch
import torch.nn as nn


class Square(torch.autograd.Function):
    """A custom Function that saves its input."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return 2 * x * grad


class Cube(torch.autograd.Function):
    """A custom Function: x**3, twice differentiable (a plain torch backward)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x**3

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * 3 * x**2


def seed_linear_linear():
    """Seed notebook section 1: Linear(3,3) -> Linear(3,3)."""
    torch.manual_seed(0)
    w1, w2 = nn.Linear(3, 3), nn.Linear(3, 3)
    a = torch.tensor([[1.0, 2.0, 3.0]])
    o1 = w1(a)
    o2 = w2(o1)
    return o2, {"params": {"w1": w1, "w2": w2}}


def mlp():
    torch.manual_seed(0)
    m = nn.Sequential(
        nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 1)
    )
    return nn.functional.mse_loss(m(torch.randn(5, 4)), torch.zeros(5, 1)), {"model": m}


def conv_net():
    torch.manual_seed(0)
    m = nn.Sequential(
        nn.Conv2d(1, 2, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(2 * 3 * 3, 3),
    )
    return nn.functional.cross_entropy(
        m(torch.randn(2, 1, 8, 8)), torch.tensor([0, 2])
    ), {"model": m}


def lstm():
    torch.manual_seed(0)
    m = nn.LSTM(3, 4, batch_first=True)
    out, (h, c) = m(torch.randn(2, 5, 3))
    return out.sum() + h.sum(), {"model": m}


def attention():
    torch.manual_seed(0)
    m = nn.MultiheadAttention(8, 2, batch_first=True)
    x = torch.randn(1, 4, 8)
    out, _ = m(x, x, x)
    return out.pow(2).mean(), {"model": m}


def in_place():
    torch.manual_seed(0)
    x = torch.randn(3, requires_grad=True)
    y = x * 2
    y.add_(1)
    y.relu_()
    return y.sum(), {"names": {x: "x"}}


def views():
    torch.manual_seed(0)
    x = torch.randn(4, 6, requires_grad=True)
    y = x.view(2, 12).t()[3:].reshape(-1).unsqueeze(0).expand(2, -1)
    return (y * 3).sum(), {"names": {x: "x"}}


def custom_function():
    torch.manual_seed(0)
    x = torch.randn(3, requires_grad=True)
    return Square.apply(x.sin()).sum(), {"names": {x: "x"}}


def shared_parameters():
    torch.manual_seed(0)
    lin = nn.Linear(4, 4)
    x = torch.randn(2, 4)
    return lin(torch.tanh(lin(x))).sum(), {"model": lin}


def two_outputs():
    torch.manual_seed(0)
    x = torch.randn(3, requires_grad=True)
    h = x.exp()
    return (h.sum(), (h * x).mean()), {"names": {x: "x"}}


def detached_branch():
    torch.manual_seed(0)
    x = torch.randn(3, requires_grad=True)
    w = torch.randn(3, requires_grad=True)
    side = (x * 10).detach()
    with torch.no_grad():
        frozen = w * 2
    return (x * side + w * frozen + w).sum(), {"names": {x: "x", w: "w"}}


def x_times_x():
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    return (x * x).sum(), {"names": {x: "x"}}


def seed_simplenet():
    """Seed notebook's SimpleNet (1-10-10-1, Tanh) with MSELoss on its data.

    Returns (loss, model); not in GRAPHS (the derivative tests use it directly).
    """
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(1, 10), nn.Tanh(), nn.Linear(10, 10), nn.Tanh(), nn.Linear(10, 1)
    )
    x = torch.linspace(-10, 10, 1000).view(-1, 1)
    y = 2 * x + 3 + torch.sin(x) * 3 * x.abs().sqrt() + torch.cos(x + 3)
    return nn.MSELoss()(model(x), y), model


GRAPHS = {
    f.__name__: f
    for f in [
        seed_linear_linear,
        mlp,
        conv_net,
        lstm,
        attention,
        in_place,
        views,
        custom_function,
        shared_parameters,
        two_outputs,
        detached_branch,
        x_times_x,
    ]
}
