"""Propagation inside real training setups: backward hooks, tied weights.

Each against the dense float64 Hessian, built without gradgraph.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import gradgraph
from gradgraph.derivatives import Curvature, hessian_trace
from gradgraph.derivatives.gradient_hooks import GradientHookError

from .cases import Cube
from .reference import dense_hessian

F = nn.functional

torch.manual_seed(0)
X = torch.randn(5, 3, dtype=torch.float64)
Y = torch.randn(5, 2, dtype=torch.float64)


def mlp():
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()


def mse(out):
    return F.mse_loss(out, Y)


def flat(result: dict) -> torch.Tensor:
    return torch.cat([v.reshape(-1) for v in result.values()])


def test_module_backward_hooks_pass_curvature_through_unchanged():
    model = mlp()
    expected = dense_hessian(model, mse, X).diagonal()
    seen = []
    model[1].register_full_backward_hook(lambda m, gi, go: seen.append("hook"))
    model[2].register_full_backward_pre_hook(lambda m, go: seen.append("pre"))
    loss = mse(model(X))
    assert gradgraph.unsupported_ops(loss, model) == []
    assert gradgraph.diagonal_method(loss, model) == "propagate"
    torch.testing.assert_close(flat(gradgraph.hessian_diagonal(loss, model)), expected)
    seen.clear()  # (the check that no hook changes a gradient runs them once)
    loss.backward()  # they stay in place for the user's own backward
    assert set(seen) == {"hook", "pre"}


def test_a_hook_that_changes_gradients_is_refused():
    """Documented meaning: the diagonal of the loss's Hessian; a hook that changes
    a gradient would make the methods disagree, so every method refuses it."""
    model = mlp()
    model[1].register_full_backward_hook(lambda m, gi, go: (10 * gi[0],))
    for method in ("propagate", "exact", "rows"):
        with pytest.raises(GradientHookError, match="gradient hook"):
            gradgraph.hessian_diagonal(
                mse(model(X)), model, method=method, progress=False
            )


def test_a_hook_on_a_module_with_two_tensor_inputs():
    class Pair(nn.Module):
        def forward(self, a, b):
            return a * b

    torch.manual_seed(2)
    lin_a, lin_b = nn.Linear(3, 2).double(), nn.Linear(3, 2).double()
    pair = Pair()
    pair.register_full_backward_hook(lambda m, gi, go: None)
    params = {
        **{f"a.{n}": p for n, p in lin_a.named_parameters()},
        **{f"b.{n}": p for n, p in lin_b.named_parameters()},
    }
    theta = torch.cat([p.detach().reshape(-1) for p in params.values()])

    def loss_of(flat_theta):
        parts, i = [], 0
        for p in params.values():
            parts.append(flat_theta[i : i + p.numel()].view(p.shape))
            i += p.numel()
        wa, ba, wb, bb = parts
        return F.mse_loss((X @ wa.T + ba) * (X @ wb.T + bb), Y)

    expected = torch.autograd.functional.hessian(loss_of, theta).diagonal()
    loss = F.mse_loss(pair(lin_a(X), lin_b(X)), Y)
    method = gradgraph.diagonal_method(loss, params)
    got = gradgraph.hessian_diagonal(loss, params)
    torch.testing.assert_close(flat(got), expected)
    if method == "propagate":
        torch.testing.assert_close(
            flat(gradgraph.hessian_diagonal(loss, params, method="propagate")),
            expected,
        )


class Tied(nn.Module):
    """An autoencoder whose decoder reuses the encoder's weight."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.enc, self.dec = nn.Linear(4, 4), nn.Linear(4, 4)
        self.dec.weight = self.enc.weight

    def forward(self, x):
        return self.dec(torch.tanh(self.enc(x)))


XT = torch.randn(3, 4, dtype=torch.float64)


def _tied():
    model = Tied().double()
    names = {
        "enc.w": model.enc.weight,
        "enc.b": model.enc.bias,
        "dec.w": model.dec.weight,
        "dec.b": model.dec.bias,
    }
    return model, names


def _tied_dense_diagonal(model) -> dict[str, torch.Tensor]:
    """Per listed name: the diagonal of the Hessian w.r.t. its (distinct) tensor."""
    distinct = dict(model.named_parameters())  # enc.weight, enc.bias, dec.bias
    diag = dense_hessian(model, lambda o: (o**2).mean(), XT).diagonal()
    by_tensor, i = {}, 0
    for name, p in distinct.items():
        by_tensor[name] = diag[i : i + p.numel()].view(p.shape)
        i += p.numel()
    return {
        "enc.w": by_tensor["enc.weight"],
        "enc.b": by_tensor["enc.bias"],
        "dec.w": by_tensor["enc.weight"],
        "dec.b": by_tensor["dec.bias"],
    }


@pytest.mark.parametrize("method", ["exact", "propagate", "rows"])
def test_a_tensor_listed_twice_gets_its_whole_diagonal_under_each_name(method):
    model, names = _tied()
    expected = _tied_dense_diagonal(model)
    loss = (model(XT) ** 2).mean()
    got = gradgraph.hessian_diagonal(loss, names, method=method, progress=False)
    assert set(got) == set(names)
    for name in names:
        torch.testing.assert_close(got[name], expected[name])


def test_tied_weights_trace_and_curvature_agree_with_the_diagonal():
    """The exact trace is the sum of the diagonal over the listed names: a
    tensor listed twice counts twice (as every trace estimator, which works on
    the listed coordinates, also counts it)."""
    model, names = _tied()
    expected = _tied_dense_diagonal(model)
    loss = (model(XT) ** 2).mean()
    trace = hessian_trace(loss, names, method="exact", progress=False)
    torch.testing.assert_close(trace, sum(v.sum() for v in expected.values()))
    curvature = Curvature(
        model, lambda out, _: (out**2).mean(), [(XT, None)], names, progress=False
    )
    diagonal = curvature.diagonal()
    for name in names:
        torch.testing.assert_close(diagonal[name], expected[name])
    torch.testing.assert_close(
        torch.as_tensor(curvature.trace(), dtype=torch.float64), trace
    )


def _observed(t):
    """``t`` through a module with a full backward hook and a pre-hook."""
    module = nn.Identity()
    module.register_full_backward_hook(lambda m, gi, go: None)
    module.register_full_backward_pre_hook(lambda m, go: None)
    return module(t)


W = torch.randn(9, dtype=torch.float64)
GRAPHS = {  # name -> a loss of one flat parameter vector w (9 entries)
    "tanh_mlp": lambda w: torch.tanh(X @ w.view(3, 3)).pow(2).sum(),
    "atan": lambda w: torch.atan(w).sum(),
    "custom_function": lambda w: Cube.apply(w).sum(),
    "split": lambda w: (w.split(3)[0] * w.split(3)[2]).sum(),
    "unbind": lambda w: w.view(3, 3).unbind(0)[1].exp().sum(),
    "hooked_module": lambda w: torch.tanh(_observed(X @ w.view(3, 3))).pow(2).sum(),
    "transposed_conv": lambda w: (
        F.conv_transpose1d(torch.tanh(X).T.unsqueeze(0), w.view(3, 1, 3)).pow(2).sum()
    ),
    "kernel_shapes_its_input": lambda w: (
        F.conv1d(w.view(1, 1, 9), w[:3].view(1, 1, 3)).pow(2).sum()
    ),
    "softmax_cross_entropy": lambda w: F.cross_entropy(
        X @ w.view(3, 3), torch.tensor([0, 1, 2, 1, 0])
    ),
}


@pytest.mark.parametrize("name", sorted(GRAPHS))
def test_diagonal_method_predicts_what_propagation_does(name):
    loss_of = GRAPHS[name]
    expected = torch.autograd.functional.hessian(loss_of, W).diagonal()
    w = W.clone().requires_grad_(True)
    method = gradgraph.diagonal_method(loss_of(w), w)
    unsupported = gradgraph.unsupported_ops(loss_of(w), w)
    assert (method == "propagate") == (unsupported == [])
    if method == "propagate":
        got = gradgraph.hessian_diagonal(loss_of(w), w, method="propagate")
        torch.testing.assert_close(got, expected)
    else:
        with pytest.raises(gradgraph.UnsupportedOpError):
            gradgraph.hessian_diagonal(loss_of(w), w, method="propagate")
    auto = gradgraph.hessian_diagonal(loss_of(w), w, progress=False)
    torch.testing.assert_close(auto, expected)
