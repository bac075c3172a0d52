"""Curvature propagation against the dense float64 Hessian (tests/reference.py)."""

from __future__ import annotations

import doctest

import pytest
import torch
import torch.nn as nn
from torch.func import functional_call, jacrev

from gradgraph.derivatives import hessian_diagonal
from gradgraph.derivatives.propagation import (
    UnsupportedOpError,
    base,
    columns,
    diagonal_method,
    engine,
    ggn_diagonal,
    propagated_hessian_diagonal,
    unsupported_ops,
)

from .cases_models import MODELS as ENGINE_MODELS
from .model_reference import case_and_hessian, flat
from .reference import dense_hessian, flat_params, unflatten

F = nn.functional


class Residual(nn.Module):
    """h + gelu(W h): two paths into one node, cross terms between them."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(3, 4), nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        h = torch.tanh(self.a(x))
        return self.c(h + F.gelu(self.b(h)))


class SharedLinear(nn.Module):
    """One Linear applied twice: its weight meets itself in a product."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 3)

    def forward(self, x):
        return self.lin(torch.tanh(self.lin(x)))


class Gated(nn.Module):
    """silu(h) * (W x), x * x and a broadcast scale: products of parameters."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 3), nn.Linear(3, 3)
        self.scale = nn.Parameter(torch.tensor([0.5, -1.0, 2.0]))

    def forward(self, x):
        h = self.a(x)
        z = F.silu(h) * self.b(x) * self.scale + h * h - 1
        return z.unsqueeze(2).permute(0, 2, 1).squeeze(1)


def mlp(act):
    return nn.Sequential(nn.Linear(3, 5), act, nn.Linear(5, 4), act, nn.Linear(4, 2))


torch.manual_seed(0)
X = torch.randn(7, 3, dtype=torch.float64)
Y = torch.randn(7, 2, dtype=torch.float64)
Y3 = torch.randn(7, 3, dtype=torch.float64)
LABELS = torch.tensor([0, 1, 1, 0, 1, 0, 0])

MODELS = {
    "tanh": (lambda: mlp(nn.Tanh()), lambda o: F.mse_loss(o, Y)),
    "relu": (lambda: mlp(nn.ReLU()), lambda o: F.mse_loss(o, Y)),
    "sigmoid": (lambda: mlp(nn.Sigmoid()), lambda o: F.mse_loss(o, Y)),
    "gelu": (lambda: mlp(nn.GELU()), lambda o: F.mse_loss(o, Y)),
    "gelu_tanh": (lambda: mlp(nn.GELU("tanh")), lambda o: F.mse_loss(o, Y)),
    "silu": (lambda: mlp(nn.SiLU()), lambda o: F.mse_loss(o, Y)),
    "softplus": (lambda: mlp(nn.Softplus(beta=2.0)), lambda o: F.mse_loss(o, Y)),
    "cross_entropy": (lambda: mlp(nn.Tanh()), lambda o: F.cross_entropy(o, LABELS)),
    "huber": (lambda: mlp(nn.GELU()), lambda o: F.huber_loss(o, Y, delta=0.3)),
    "smooth_l1_sum": (
        lambda: mlp(nn.SiLU()),
        lambda o: F.smooth_l1_loss(o, Y, beta=0.5, reduction="sum"),
    ),
    "residual": (Residual, lambda o: F.mse_loss(o, Y)),
    "shared_parameters": (SharedLinear, lambda o: ((o - 1) ** 2).sum()),
    "products": (Gated, lambda o: F.mse_loss(o, Y3)),
    "losses_summed": (
        lambda: mlp(nn.Softplus()),
        lambda o: (
            F.mse_loss(o, Y)
            + 0.5 * F.cross_entropy(o, LABELS)
            + o.exp().mean()
            + (1 / (o * o + 1)).sum()
        ),
    ),
}


def dense_diagonal(model, loss_of_output):
    return dense_hessian(model, loss_of_output, X).diagonal()


def as_flat(result: dict, model) -> torch.Tensor:
    return torch.cat([result[n].reshape(-1) for n, _ in model.named_parameters()])


@pytest.mark.parametrize("case", sorted(MODELS))
def test_propagated_diagonal_is_the_exact_diagonal(case):
    build, loss_of_output = MODELS[case]
    torch.manual_seed(1)
    model = build().double()
    expected = dense_diagonal(model, loss_of_output)
    got = propagated_hessian_diagonal(loss_of_output(model(X)), model)
    assert set(got) == {n for n, _ in model.named_parameters()}
    torch.testing.assert_close(as_flat(got, model), expected)


def test_ggn_diagonal_is_the_gauss_newton_diagonal():
    torch.manual_seed(1)
    model = mlp(nn.GELU()).double()
    names, shapes, flat = flat_params(model)

    def outputs(theta):
        return functional_call(model, unflatten(theta, names, shapes), (X,))

    jac = jacrev(outputs)(flat).reshape(-1, flat.numel())  # [N*2, P]
    out = outputs(flat).detach()
    loss_hessian = torch.autograd.functional.hessian(
        lambda o: F.cross_entropy(o.view_as(out), LABELS), out.reshape(-1)
    )
    expected = (jac.T @ loss_hessian @ jac).diagonal()
    got = ggn_diagonal(F.cross_entropy(model(X), LABELS), model)
    torch.testing.assert_close(as_flat(got, model), expected)
    exact = propagated_hessian_diagonal(F.cross_entropy(model(X), LABELS), model)
    assert not torch.allclose(as_flat(exact, model), expected)  # GELU's own terms


def test_params_forms_and_a_subset():
    torch.manual_seed(1)
    model = mlp(nn.Tanh()).double()
    expected = dense_diagonal(model, lambda o: F.mse_loss(o, Y))
    weights = [model[0].weight, model[4].bias]
    got = propagated_hessian_diagonal(F.mse_loss(model(X), Y), weights)
    assert isinstance(got, list)
    n0 = model[0].weight.numel()
    torch.testing.assert_close(got[0].reshape(-1), expected[:n0])
    torch.testing.assert_close(got[1], expected[-2:])
    one = propagated_hessian_diagonal(F.mse_loss(model(X), Y), model[4].bias)
    torch.testing.assert_close(one, expected[-2:])


def test_an_op_without_a_rule_is_named():
    w = torch.randn(3, dtype=torch.float64, requires_grad=True)
    loss = (torch.atan(w) * 2).sum()
    assert unsupported_ops(loss, w) == ["AtanBackward0"]
    with pytest.raises(UnsupportedOpError, match="AtanBackward0 has no curvature rule"):
        propagated_hessian_diagonal(loss, w)
    x = torch.randn(3, dtype=torch.float64)  # an op off the path to w is fine
    assert unsupported_ops((torch.atan(x) * w.sin()).sum(), w) == []


def test_a_denominator_that_depends_on_the_parameters():
    w = torch.randn(3, dtype=torch.float64, requires_grad=True)

    def f(w):
        return (w / (w * w + 1) + w / 2 + 3 / w.exp()).sum()

    expected = torch.autograd.functional.hessian(f, w.detach()).diagonal()
    assert diagonal_method(f(w), w) == "propagate"
    torch.testing.assert_close(propagated_hessian_diagonal(f(w), w), expected)


def test_bad_params():
    w = torch.randn(3, requires_grad=True)
    v = torch.randn(3, requires_grad=True)
    with pytest.raises(ValueError, match="does not depend on 'params\\[1\\]'"):
        propagated_hessian_diagonal(w.sin().sum(), [w, v])
    h = w * 2
    with pytest.raises(ValueError, match="not a leaf tensor"):
        propagated_hessian_diagonal(h.sin().sum(), h)
    with pytest.raises(ValueError, match="scalar"):
        propagated_hessian_diagonal(w.sin(), w)


def test_leaves_no_state_behind():
    torch.manual_seed(1)
    model = mlp(nn.SiLU()).double()
    loss = F.mse_loss(model(X), Y)
    propagated_hessian_diagonal(loss, model)
    assert torch.is_grad_enabled()
    assert all(p.grad is None for p in model.parameters())
    loss.backward()  # the graph was not freed
    assert model[0].weight.grad is not None
    with pytest.raises(ValueError, match="retain_graph=True"):
        propagated_hessian_diagonal(loss, model)


def test_float32_matches_float64():
    torch.manual_seed(1)
    model = mlp(nn.GELU())
    got32 = propagated_hessian_diagonal(F.mse_loss(model(X.float()), Y.float()), model)
    model64 = model.double()
    got64 = propagated_hessian_diagonal(F.mse_loss(model64(X), Y), model64)
    for name, value in got32.items():
        assert value.dtype == torch.float32
        torch.testing.assert_close(value.double(), got64[name], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("module", [engine, base, columns])
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize("name", sorted(ENGINE_MODELS))
def test_engine_models_auto_and_propagate(name):
    case, dense = case_and_hessian(name)
    options = {"allow_unused": case.unused}
    assert diagonal_method(case.loss(), case.model, **options) == "propagate"
    auto = hessian_diagonal(case.loss(), case.model, progress=False, **options)
    torch.testing.assert_close(flat(auto), dense.diagonal())
    forced = hessian_diagonal(case.loss(), case.model, "propagate", **options)
    torch.testing.assert_close(flat(forced), dense.diagonal())
