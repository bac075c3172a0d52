"""Property tests: random op graphs trace like torchviz, deterministically.

A drawn program is a list of steps; each applies one of ~30 ops to values made
earlier (so subexpressions are shared and fan-in varies), and its outputs are
some of the values. The same program is built twice to check determinism.
"""

from __future__ import annotations

import networkx as nx
import torch
import torchviz
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gradgraph import trace

from .cases import Square
from .torchviz_structure import our_structure, torchviz_structure

UNARY = [
    torch.sin,
    torch.cos,
    torch.tanh,
    torch.sigmoid,
    torch.relu,
    torch.neg,
    torch.abs,
    lambda a: a.exp().clamp(max=1e3),
    lambda a: a.abs().add(1).log(),
    lambda a: a.abs().add(1).sqrt(),
    lambda a: a * a,
    lambda a: a.pow(3),
    lambda a: a.flip(0),
    lambda a: a.roll(1),
    lambda a: a.cumsum(0),
    lambda a: a.view(2, 2).t().reshape(4),
    lambda a: a.unsqueeze(1).expand(4, 3).sum(1),
    lambda a: a.clone().mul_(2),
    lambda a: a.detach() * 2,
    lambda a: a[torch.tensor([3, 0, 0, 1])],
    lambda a: Square.apply(a),
    lambda a: torch.nn.functional.softplus(a),
]
BINARY = [
    torch.add,
    torch.sub,
    torch.mul,
    lambda a, b: a / (b.abs() + 1),
    torch.maximum,
    torch.atan2,
    lambda a, b: torch.where(a > 0, a, b),
    lambda a, b: torch.stack([a, b]).sum(0),
    lambda a, b: torch.cat([a, b])[2:6],
    lambda a, b: torch.outer(a, b).sum(1),
]
OPS = [(1, f) for f in UNARY] + [(2, f) for f in BINARY]

steps = st.lists(
    st.tuples(st.integers(0, len(OPS) - 1), st.integers(0, 99), st.integers(0, 99)),
    min_size=1,
    max_size=25,
)
picks = st.lists(st.integers(0, 99), min_size=1, max_size=3)


def build(program, outputs_at):
    """Run a drawn program; returns (outputs, leaves)."""
    torch.manual_seed(0)
    leaves = [torch.randn(4, requires_grad=True) for _ in range(3)]
    values = list(leaves) + [torch.randn(4)]  # one input without grad
    for op, i, j in program:
        arity, f = OPS[op]
        args = [values[i % len(values)], values[j % len(values)]][:arity]
        values.append(f(*args))
    with_graph = [v for v in values[len(leaves) + 1 :] if v.grad_fn is not None]
    if not with_graph:
        with_graph = [values[-1] * leaves[0]]
    outputs = tuple(dict.fromkeys(with_graph[k % len(with_graph)] for k in outputs_at))
    return outputs, leaves


@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(program=steps, outputs_at=picks)
def test_random_graphs(program, outputs_at):
    outputs, leaves = build(program, outputs_at)
    g = trace(outputs, keep=True)

    # same nodes and edges as torchviz
    assert our_structure(g) == torchviz_structure(torchviz.make_dot(outputs))
    assert nx.is_directed_acyclic_graph(g.dag)

    # every leaf AccumulateGrad is one of the tensors that require grad
    for node in g.leaves:
        if g.dag.nodes[node]["op"] == "AccumulateGrad":
            variable = g.grad_fn(node).variable
            assert variable.requires_grad
            assert any(variable is leaf for leaf in leaves)

    # deterministic: the same program gives the same ids, ops, edges and DOT
    again = trace(build(program, outputs_at)[0])
    assert list(again.dag.nodes(data="op")) == list(g.dag.nodes(data="op"))
    assert list(again.dag.edges(data=True)) == list(g.dag.edges(data=True))
    assert again.to_dot() == g.to_dot()
    assert again.roots == g.roots
