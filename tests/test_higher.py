"""derivatives() against nested torch.func.grad and the seed notebook's numbers."""

from __future__ import annotations

import pytest
import torch
from torch.func import grad, vmap

from gradgraph import GradGraph, derivatives


def test_seed_x_to_the_fourth():
    got = derivatives(lambda x: x**4, 1.0, 3)
    assert [float(d) for d in got] == [4.0, 12.0, 24.0]
    assert derivatives(lambda x: x**4, 1.0, 5)[3:] == [torch.tensor(24.0), 0 * got[0]]


@pytest.mark.parametrize(
    "f", [torch.sin, torch.tanh, lambda x: x**3 * torch.exp(-x), torch.special.erf]
)
def test_elementwise_matches_nested_func_grad(f):
    x = torch.linspace(-2, 2, 9, dtype=torch.float64)
    got = derivatives(f, x, 4)
    fn = f
    for d in got:
        fn = grad(fn)
        torch.testing.assert_close(d, vmap(fn)(x))


def test_input_is_left_alone_and_tensor_shapes_kept():
    x = torch.ones(2, 3, dtype=torch.float64, requires_grad=True)
    got = derivatives(torch.exp, x, 2)
    assert x.grad is None and all(d.shape == (2, 3) for d in got)
    torch.testing.assert_close(got[1], torch.exp(x.detach()))


def test_graph_option_returns_growing_graphs():
    values, graphs = derivatives(lambda x: x**4, 1.0, 3, graph=True)
    assert [float(v) for v in values] == [4.0, 12.0, 24.0]
    assert all(isinstance(g, GradGraph) for g in graphs)
    # d/dx x^n is n x^(n-1): every order is a fresh pow, named x at the leaf
    for g in graphs:
        ops = g.summary()["by_op"]
        assert ops["PowBackward0"] == 1 and ops["AccumulateGrad"] == 1
        assert {d.get("name") for _, d in g.dag.nodes(data=True)} >= {"x"}
    # tanh' = 1 - tanh^2 reuses tanh's output: each order's graph holds the last
    _, graphs = derivatives(torch.tanh, torch.zeros(3), 3, graph=True)
    sizes = [len(g) for g in graphs]
    assert sizes[0] < sizes[1] < sizes[2]
    _, graphs = derivatives(lambda x: x**2, 1.0, 3, graph=True)
    assert graphs[0] is not None and graphs[2] is None  # f''' is constant


def test_bad_inputs():
    with pytest.raises(ValueError, match="order"):
        derivatives(torch.sin, 1.0, 0)
    with pytest.raises(TypeError, match="floating"):
        derivatives(torch.sin, torch.tensor([1, 2]), 1)
    with pytest.raises(TypeError, match="callable"):
        derivatives("sin", 1.0, 1)
    with pytest.raises(ValueError, match="elementwise"):
        derivatives(lambda x: x.sum(), torch.ones(3), 1)
