"""The seed notebook's model and data, shared by the examples that use them.

``SimpleNet`` is a 1-10-10-1 Tanh network; ``target_function`` is the curve it
learns, sampled on 1000 points in [-10, 10] by :func:`training_data`.
"""

import copy

import numpy as np
import torch
import torch.nn as nn


def target_function(x):
    """2x + 3 + 3 sin(x) sqrt|x| + cos(x + 3), on numpy arrays."""
    return 2 * x + 3 + np.sin(x) * 3 * np.sqrt(abs(x)) + np.cos(x + 3)


class SimpleNet(nn.Module):
    """Linear(1, 10) -> Tanh -> Linear(10, 10) -> Tanh -> Linear(10, 1)."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Sequential(
            nn.Linear(1, 10),
            nn.Tanh(),
            nn.Linear(10, 10),
            nn.Tanh(),
            nn.Linear(10, 1),
        )

    def forward(self, x):
        return self.linear(x)


def training_data(points=1000):
    """Inputs ``x`` (points x 1) and targets ``y`` on an even grid of [-10, 10]."""
    x = torch.linspace(-10, 10, points).view(-1, 1)
    y = torch.tensor(target_function(x.numpy()), dtype=torch.float32).view(-1, 1)
    return x, y


def seeded_model_and_loss(seed=0):
    """A SimpleNet with seeded weights and its MSE loss on the training data."""
    torch.manual_seed(seed)
    model = SimpleNet()
    x, y = training_data()
    loss = nn.MSELoss()(model(x), y)
    return model, loss


def dense_hessian_float64(model, x, y):
    """The loss Hessian over all parameters, flattened in order, in float64.

    The slow obvious reference: ``torch.autograd.functional.hessian`` of the MSE
    loss as a function of one flat parameter vector, on a float64 copy.
    """
    names = [name for name, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    flat = torch.cat([p.detach().double().reshape(-1) for p in model.parameters()])
    model64 = copy.deepcopy(model).double()

    def loss_of_flat(theta):
        chunks = torch.split(theta, [s.numel() for s in shapes])
        weights = {n: c.view(s) for n, c, s in zip(names, chunks, shapes, strict=True)}
        pred = torch.func.functional_call(model64, weights, (x.double(),))
        return nn.functional.mse_loss(pred, y.double())

    return torch.autograd.functional.hessian(loss_of_flat, flat, vectorize=True)
