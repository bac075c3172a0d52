"""gradgraph.make_dot against torchviz.make_dot, run side by side on the same graphs."""

from __future__ import annotations

import re
import sys

import pytest
import torch
import torch.nn as nn
import torchviz

from gradgraph import DotNotFoundError, make_dot, trace

from .cases import GRAPHS
from .torchviz_structure import our_structure, torchviz_structure

_EDGE = re.compile(r"^\tn(\d+) -> n(\d+)$")


def readme_model():
    """The model of torchviz's README."""
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("W0", nn.Linear(8, 16))
    model.add_module("tanh", nn.Tanh())
    model.add_module("W1", nn.Linear(16, 1))
    return model, model(torch.randn(1, 8))


def make_dot_structure(dot, graph) -> tuple[set[int], set[tuple[int, int]]]:
    """grad_fn ids and edges of our Digraph (nodes n<k> -> graph.grad_fn(k))."""
    ids = {n: id(graph.grad_fn(n)) for n in graph.dag}
    edges = set()
    for line in dot.body:
        if m := _EDGE.match(line.rstrip("\n")):
            edges.add((ids[int(m.group(2))], ids[int(m.group(1))]))  # input -> use
    nodes = {ids[int(n)] for n in re.findall(r"^\tn(\d+) \[", dot.source, re.M)}
    return nodes, edges


README_CALLS = [
    ("plain", lambda model: {}),
    ("params", lambda model: {"params": dict(model.named_parameters())}),
    (
        "params+attrs+saved",
        lambda model: {
            "params": dict(model.named_parameters()),
            "show_attrs": True,
            "show_saved": True,
        },
    ),
    ("max_attr_chars", lambda model: {"show_attrs": True, "max_attr_chars": 5}),
]


@pytest.mark.parametrize("call", README_CALLS, ids=[c[0] for c in README_CALLS])
def test_readme_calls_give_torchviz_structure(call):
    model, y = readme_model()
    kwargs = call[1](model)
    out = y.mean()
    theirs = torchviz_structure(torchviz.make_dot(out, **kwargs))
    ours = make_dot(out, **kwargs)
    assert make_dot_structure(ours, trace(out, keep=True)) == theirs
    if "params" in kwargs:
        for name in ("W0.weight", "W0.bias", "W1.weight", "W1.bias"):
            assert name in ours.source
    if kwargs.get("show_saved"):
        assert 'class="saved"' in ours.source
    if kwargs.get("show_attrs"):
        assert "dim" in ours.source or "alpha" in ours.source


@pytest.mark.parametrize("case", sorted(GRAPHS))
def test_same_grad_fn_nodes_and_edges_as_torchviz(case):
    out, kw = GRAPHS[case]()
    outs = out if isinstance(out, tuple) else (out,)
    var = outs if len(outs) > 1 else outs[0]
    theirs = torchviz_structure(torchviz.make_dot(var))
    graph = trace(*outs, keep=True)
    assert our_structure(graph) == theirs
    assert make_dot_structure(make_dot(var), graph) == theirs


def test_make_dot_is_deterministic_and_names_outputs():
    def build():
        model, y = readme_model()
        out = y.mean()
        return make_dot(out, params=dict(model.named_parameters()), names={out: "loss"})

    a, b = build(), build()
    assert a.source == b.source
    assert a.pipe(format="svg") == b.pipe(format="svg")
    assert "loss" in a.source


def test_deep_graph_beyond_recursion_limit_and_after_backward():
    x = torch.ones(3, requires_grad=True)
    y = x
    for _ in range(3 * sys.getrecursionlimit()):
        y = y * 1.0001
    out = y.sum()
    with pytest.raises(RecursionError):
        torchviz.make_dot(out)
    dot = make_dot(out)
    assert dot.source.count("MulBackward0") == 3 * sys.getrecursionlimit()

    model, y = readme_model()
    loss = y.mean()
    loss.backward()
    with pytest.raises(RuntimeError, match="freed|backward"):
        torchviz.make_dot(loss, show_saved=True)
    after = make_dot(loss, show_saved=True, show_attrs=True)
    assert 'class="freed"' in after.source and "freed by backward()" in after.source


def test_make_dot_missing_dot_binary(tmp_path, monkeypatch):
    _, y = readme_model()
    dot = make_dot(y.mean())
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(DotNotFoundError, match="conda install graphviz"):
        dot.pipe(format="svg")
    with pytest.raises(DotNotFoundError, match="apt-get install graphviz"):
        dot.render(tmp_path / "x", format="svg")
    assert "digraph" in dot.source


def _boxes(source: str) -> int:
    return len(re.findall(r"^\t\S+ \[.*label=", source, flags=re.M))


@pytest.mark.parametrize(
    "var",
    [torch.randn(3), (torch.randn(3), torch.zeros(2, 2))],
    ids=["one", "tuple"],
)
def test_a_tensor_without_a_graph_draws_one_box_like_torchviz(var):
    ours = make_dot(var).source
    assert _boxes(ours) == _boxes(torchviz.make_dot(var).source)
    assert "float32[3]" in ours and "<svg" in make_dot(var).pipe("svg").decode()


def test_untracked_beside_tracked_outputs():
    x = torch.ones(2, requires_grad=True)
    source = make_dot((x * 2, torch.randn(4))).source
    assert "MulBackward0" in source and "float32[4]" in source


def test_make_dot_from_trace_behaves_as_torchviz():
    import gradgraph

    assert {"make_dot", "make_dot_from_trace"} <= set(gradgraph.__all__)
    for fn in (torchviz.make_dot_from_trace, gradgraph.make_dot_from_trace):
        with pytest.raises(NotImplementedError, match="tensorboard"):
            fn(None)
