"""Second derivatives that autograd cannot give raise, never return zeros.

A custom Function with an ``@once_differentiable`` backward, and any call under
``torch.inference_mode()``, used to give zeros (or a Hessian missing terms).
"""

from __future__ import annotations

import pytest
import torch
from torch.autograd.function import once_differentiable

import gradgraph
from gradgraph import SecondOrderError as OnceDifferentiableError

from .cases import Square


class OnceSquare(Square):
    """``Square`` whose backward is marked once differentiable."""

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        return Square.backward(ctx, grad)


def _second_order_calls(loss_of, w):
    ones = torch.ones_like(w)
    quiet = {"progress": False}
    return {
        "exact": lambda: gradgraph.hessian_diagonal(loss_of(), w, **quiet),
        "rows": lambda: gradgraph.hessian_diagonal(
            loss_of(), w, method="rows", **quiet
        ),
        "xdiag": lambda: gradgraph.hessian_diagonal(
            loss_of(), w, method="xdiag", **quiet
        ),
        "hvp": lambda: gradgraph.hvp(loss_of(), w, ones),
        "hessian": lambda: gradgraph.hessian(loss_of(), w, **quiet),
        "trace": lambda: gradgraph.hessian_trace(loss_of(), w, **quiet),
        "eigenvalues": lambda: gradgraph.hessian_eigenvalues(loss_of(), w, **quiet),
        "expand": lambda: gradgraph.expand(loss_of(), w, order=2),
    }


LOSSES = {
    "alone": lambda w: OnceSquare.apply(w).sum(),
    # the gradient has a graph through w**3, but misses Square's second derivative
    "mixed": lambda w: OnceSquare.apply(w).sum() + (w**3).sum(),
}


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("call", list(_second_order_calls(None, torch.ones(1))))
def test_once_differentiable_function_raises_naming_it(loss, call):
    w = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    calls = _second_order_calls(lambda: LOSSES[loss](w), w)
    with pytest.raises(OnceDifferentiableError, match="OnceSquare"):
        calls[call]()


def test_once_differentiable_in_derivatives():
    with pytest.raises(OnceDifferentiableError, match="OnceSquare"):
        gradgraph.derivatives(OnceSquare.apply, torch.ones(2), 2)
    (first,) = gradgraph.derivatives(OnceSquare.apply, torch.tensor([1.0, 3.0]), 1)
    torch.testing.assert_close(first, torch.tensor([2.0, 6.0]))


def test_once_differentiable_off_the_params_path_is_fine():
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    x = torch.tensor([0.5, 1.5], requires_grad=True)  # not a parameter
    loss = (OnceSquare.apply(x) * w**2).sum()  # H_w = diag(2 x**2)
    got = gradgraph.hessian_diagonal(loss, w, method="exact", progress=False)
    torch.testing.assert_close(got, 2 * x.detach() ** 2)
    graph = gradgraph.expand(OnceSquare.apply(w).sum(), w, order=1)
    assert graph.dag.number_of_nodes() > 0


def _inference_calls():
    w = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    loss = (w**3).sum()  # built outside inference mode
    calls = _second_order_calls(lambda: loss, w)
    calls["derivatives"] = lambda: gradgraph.derivatives(torch.sin, torch.ones(2), 2)
    grads = torch.autograd.grad(loss, w, create_graph=True)
    calls["hvp_grads"] = lambda: gradgraph.hvp(None, w, torch.ones(3), grads=grads)
    return calls


@pytest.mark.parametrize("call", list(_inference_calls()))
def test_inference_mode_raises(call):
    calls = _inference_calls()
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        calls[call]()
