"""hvp() against the dense float64 Hessian on every model case, and its bad inputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from gradgraph import hvp

from .cases_models import MODELS, seed_simple_net
from .model_reference import case_and_hessian, flat


@pytest.mark.parametrize("name", MODELS)
def test_hvp_matches_dense_hessian_both_paths(name):
    case, H = case_and_hessian(name)
    v = torch.randn(H.shape[0], dtype=torch.float64, generator=torch.Generator())
    loss = case.loss()
    got = hvp(loss, case.model, v, allow_unused=case.unused)
    assert list(got) == [n for n, _ in case.model.named_parameters()]
    torch.testing.assert_close(flat(got), H @ v)
    params = list(case.model.parameters())
    grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
    grads = [
        torch.zeros_like(p) if g is None else g
        for g, p in zip(grads, params, strict=True)
    ]
    for _ in range(2):  # the reused gradient graph serves many vectors
        again = hvp(None, params, v, grads=grads)
        torch.testing.assert_close(torch.cat([a.reshape(-1) for a in again]), H @ v)


def test_hvp_forms_dict_in_dict_out():
    case, H = case_and_hessian("residual_net")
    named = dict(case.model.named_parameters())
    vec = {n: torch.ones_like(p) for n, p in named.items()}
    got = hvp(case.loss(), named, vec)
    torch.testing.assert_close(flat(got), H.sum(dim=1))


def test_hvp_bad_inputs():
    case = seed_simple_net()
    model = case.model
    loss = case.loss()
    with pytest.raises(ValueError, match="scalar"):
        hvp(
            model(case.inputs), model, [torch.zeros_like(p) for p in model.parameters()]
        )
    with pytest.raises(ValueError, match="shape"):
        hvp(loss, model, torch.zeros(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="float32"):
        hvp(
            loss,
            model,
            {n: torch.zeros_like(p).float() for n, p in model.named_parameters()},
        )
    with pytest.raises(ValueError, match="device"):
        hvp(
            loss,
            model,
            {
                n: torch.zeros_like(p, device="meta")
                for n, p in model.named_parameters()
            },
        )
    bad = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    bad["0.bias"][0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        hvp(loss, model, bad)
    frozen = nn.Linear(1, 1).double().requires_grad_(False)
    with pytest.raises(ValueError, match="does not require grad"):
        hvp(loss, [frozen.weight], torch.zeros(1, dtype=torch.float64))
    with pytest.raises(ValueError, match="grads carry no graph"):
        zeros = [torch.zeros_like(p) for p in model.parameters()]
        hvp(None, model, zeros, grads=zeros)
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
