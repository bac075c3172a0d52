"""hvp() against the dense float64 Hessian, and its bad inputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from gradgraph import hvp

from .reference import dense_hessian, flat_params


def simple_net():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(1, 10), nn.Tanh(), nn.Linear(10, 10), nn.Tanh(), nn.Linear(10, 1)
    ).double()
    x = torch.linspace(-2, 2, 20, dtype=torch.float64).view(-1, 1)
    y = torch.sin(x)
    return model, x, y


def test_hvp_matches_dense_hessian_both_paths():
    model, x, y = simple_net()
    H = dense_hessian(model, lambda out: nn.functional.mse_loss(out, y), x)
    _, _, _ = flat_params(model)
    v = torch.randn(
        H.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(1)
    )
    loss = nn.functional.mse_loss(model(x), y)
    got = hvp(loss, model, v)
    flat = torch.cat([got[n].reshape(-1) for n, _ in model.named_parameters()])
    torch.testing.assert_close(flat, H @ v)
    grads = torch.autograd.grad(loss, list(model.parameters()), create_graph=True)
    again = hvp(None, list(model.parameters()), v, grads=list(grads))
    torch.testing.assert_close(torch.cat([a.reshape(-1) for a in again]), H @ v)


def test_hvp_bad_inputs():
    model, x, y = simple_net()
    loss = nn.functional.mse_loss(model(x), y)
    with pytest.raises(ValueError, match="scalar"):
        hvp(model(x), model, [torch.zeros_like(p) for p in model.parameters()])
    with pytest.raises(ValueError, match="shape"):
        hvp(loss, model, torch.zeros(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="float32"):
        hvp(
            loss,
            model,
            {n: torch.zeros_like(p).float() for n, p in model.named_parameters()},
        )
    bad = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    bad["0.bias"][0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        hvp(loss, model, bad)
    unused = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    params = list(model.parameters()) + [unused]
    vec = [torch.ones_like(p) for p in params]
    with pytest.raises(ValueError, match="allow_unused"):
        hvp(loss, params, vec)
    assert torch.equal(
        hvp(loss, params, vec, allow_unused=True)[-1],
        torch.zeros(2, dtype=torch.float64),
    )
    loss.backward()
    with pytest.raises(ValueError, match="retain_graph"):
        hvp(loss, model, {n: torch.zeros_like(p) for n, p in model.named_parameters()})
