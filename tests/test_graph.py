"""trace(): structure, names, determinism, freed graphs, scale, bad input."""

from __future__ import annotations

import sys

import networkx as nx
import pytest
import torch
import torch.nn as nn
import torchviz

import gradgraph
from gradgraph import trace

from .cases import GRAPHS, seed_linear_linear
from .torchviz_structure import our_structure, torchviz_structure


def ops_of(graph, nodes):
    return [graph.dag.nodes[n]["op"] for n in nodes]


def children(graph, node):
    """Successors in next_functions order."""
    return sorted(
        graph.dag.successors(node), key=lambda v: graph.dag.edges[node, v]["input_nr"]
    )


def test_seed_section_1_linear_linear():
    torch.manual_seed(0)
    w1, w2 = nn.Linear(3, 3), nn.Linear(3, 3)
    a = torch.tensor([[1.0, 2.0, 3.0]])
    o1 = w1(a)
    o2 = w2(o1)
    g = trace(o2, params={"w1": w1, "w2": w2}, keep=True)
    root = g.roots[0]
    assert g.dag.nodes[root]["op"] == "AddmmBackward0"
    assert g.dag.nodes[root]["kind"] == "root"
    kids = children(g, root)
    assert ops_of(g, kids) == ["AccumulateGrad", "AddmmBackward0", "TBackward0"]
    assert g.dag.nodes[kids[0]]["name"] == "w2.bias"
    # the middle child is o1's node, and the same id o1 traces to
    assert g.grad_fn(kids[1]) is o1.grad_fn
    g1 = trace(o1, params={"w1": w1, "w2": w2})
    assert g1.dag.nodes[g1.roots[0]]["op"] == "AddmmBackward0"
    assert g.grad_fn(kids[1]) is o2.grad_fn.next_functions[1][0]
    (t_child,) = children(g, kids[2])
    assert g.dag.nodes[t_child]["op"] == "AccumulateGrad"
    assert g.dag.nodes[t_child]["name"] == "w2.weight"
    assert g.dag.number_of_nodes() == 8 and g.dag.number_of_edges() == 7
    # a bare module names parameters without a prefix
    g2 = trace(o2, model=w2)
    assert g2.dag.nodes[children(g2, g2.roots[0])[0]]["name"] == "bias"


def test_node_facts_match_torch():
    x = torch.randn(2, 3, requires_grad=True)
    y = (x @ torch.randn(3, 4)).tanh()
    g = trace(y, names={x: "x"})
    root = g.dag.nodes[g.roots[0]]
    assert root["op"] == type(y.grad_fn).__name__ == "TanhBackward0"
    assert root["shape"] == tuple(y.shape) and root["dtype"] == "float32"
    assert root["seq_nr"] == y.grad_fn._sequence_nr()
    (saved,) = root["saved"]
    assert saved["attr"] == "result" and saved["shape"] == (2, 4)
    assert saved["nbytes"] == y.numel() * 4 and saved["freed"] is False
    leaf = next(d for _, d in g.dag.nodes(data=True) if d["kind"] == "accumulate")
    assert leaf["name"] == "x" and leaf["shape"] == (2, 3) and leaf["seq_nr"] is None


def test_saved_tensor_knows_its_parameter():
    out, kw = seed_linear_linear()
    g = trace(out, **kw)
    saved = {s["attr"]: s for s in g.dag.nodes[g.roots[0]]["saved"]}
    assert saved["mat2"]["of"] == "w2.weight"
    assert "of" not in saved["mat1"]


def test_multi_output_node_lists_every_shape():
    x = torch.randn(2, 3, requires_grad=True)
    a, b = x.unbind(0)
    g = trace(a, b)
    assert g.roots == [0]
    assert g.dag.nodes[0]["shapes"] == ((3,), (3,))
    assert len(g.outputs) == 2


@pytest.mark.parametrize("name", sorted(GRAPHS))
def test_same_nodes_and_edges_as_torchviz(name):
    outputs, kw = GRAPHS[name]()
    g = trace(outputs, keep=True, **kw)
    dot = torchviz.make_dot(outputs)
    ours = our_structure(g)
    theirs = torchviz_structure(dot)
    assert ours[0] == theirs[0]
    assert ours[1] == theirs[1]
    assert len(ours[0]) == g.dag.number_of_nodes() >= 2


@pytest.mark.parametrize("name", sorted(GRAPHS))
def test_deterministic_ids_and_dot(name):
    a_out, kw = GRAPHS[name]()
    b_out, kw2 = GRAPHS[name]()
    a, b = trace(a_out, **kw), trace(b_out, **kw2)
    assert a.to_dot() == b.to_dot()
    assert list(a.dag.nodes(data="op")) == list(b.dag.nodes(data="op"))
    # seq_nr is torch's process-wide creation counter: equal up to an offset
    sa, sb = (dict(g.dag.nodes(data="seq_nr")) for g in (a, b))
    offsets = {sb[n] - sa[n] for n in sa if sa[n] is not None}
    assert len(offsets) <= 1
    for g in (a, b):
        for n in g.dag:
            g.dag.nodes[n]["seq_nr"] = None
    assert a.to_json() == b.to_json()
    assert nx.is_directed_acyclic_graph(a.dag)


def test_parallel_edges_are_counted():
    out, kw = GRAPHS["x_times_x"]()
    g = trace(out, **kw)
    mul = g.nodes_by_op("MulBackward0")[0]
    (leaf,) = g.dag.successors(mul)
    assert g.dag.edges[mul, leaf]["multiplicity"] == 2
    assert g.to_dot(flow="backward").count(f"n{mul} -> n{leaf}") == 2


def test_walk_after_backward_marks_saved_tensors_freed():
    out, kw = GRAPHS["mlp"]()
    before = trace(out, **kw)
    assert before.summary()["freed_tensors"] == 0
    out.backward()
    with pytest.raises(RuntimeError):  # torchviz's way of reading them fails here
        torchviz.make_dot(out, show_saved=True)
    after = trace(out, **kw)
    assert after.summary()["freed_tensors"] == before.summary()["saved_tensors"] > 0
    assert after.summary()["saved_bytes"] == 0
    # the structure and shapes are unchanged
    assert list(after.dag.nodes(data="shape")) == list(before.dag.nodes(data="shape"))


def test_retain_graph_keeps_saved_tensors():
    out, kw = GRAPHS["mlp"]()
    out.backward(retain_graph=True)
    assert trace(out, **kw).summary()["freed_tensors"] == 0


def test_leaf_tensor_is_a_one_node_graph():
    x = torch.ones(3, requires_grad=True)
    g = trace(x, names={x: "x"})
    assert g.dag.number_of_nodes() == 1
    assert g.dag.nodes[0]["op"] == "AccumulateGrad" and g.dag.nodes[0]["name"] == "x"
    assert g.roots == g.leaves == [0]


def test_outputs_from_dict_are_named():
    x = torch.ones(3, requires_grad=True)
    g = trace({"loss": (x * 2).sum(), "aux": x.exp()})
    assert [o["name"] for o in g.outputs] == ["loss", "aux"]
    assert g.dag.nodes[g.roots[0]]["name"] == "loss"


def test_trace_keeps_no_tensors_alive():
    import gc
    import weakref

    out, kw = GRAPHS["mlp"]()
    model = kw["model"]
    g = trace(out, **kw)
    refs = [weakref.ref(out)] + [weakref.ref(p) for p in model.parameters()]
    del out, model, kw
    gc.collect()
    assert all(r() is None for r in refs)
    assert g.dag.number_of_nodes() > 5


def test_grad_fn_needs_keep():
    g = trace((torch.ones(2, requires_grad=True) * 2).sum())
    with pytest.raises(ValueError, match="keep=True"):
        g.grad_fn(0)


def test_torchviz_recursion_limit_is_the_bar():
    x = torch.ones(1, requires_grad=True)
    y = x
    for _ in range(sys.getrecursionlimit() + 100):
        y = y * 1.0
    with pytest.raises(RecursionError):
        torchviz.make_dot(y)
    assert trace(y).dag.number_of_nodes() == sys.getrecursionlimit() + 101


# -- bad input -----------------------------------------------------------------


def test_non_tensor_is_a_type_error():
    with pytest.raises(TypeError, match="takes tensors"):
        trace(3.0)


def test_tensor_without_graph_says_what_to_do():
    with pytest.raises(ValueError, match="requires_grad=True"):
        trace(torch.ones(3))


def test_empty_list_says_what_to_do():
    with pytest.raises(ValueError, match="at least one output"):
        trace([])


def test_unknown_name_key():
    x = torch.ones(3, requires_grad=True)
    with pytest.raises(TypeError, match="tensor, name"):
        trace(x * 2, names={"x": "not a tensor"})
    other = torch.ones(3, requires_grad=True)
    with pytest.raises(ValueError, match="not in the traced graph"):
        trace(x * 2, names={other: "other"})


def test_bad_model_and_params():
    x = torch.ones(3, requires_grad=True)
    with pytest.raises(TypeError, match="nn.Module"):
        trace(x * 2, model={"x": x})
    with pytest.raises(TypeError, match="tensor or an nn.Module"):
        trace(x * 2, params={"x": 3})


def test_trace_restores_gc_state():
    import gc

    gc.disable()
    try:
        trace((torch.ones(2, requires_grad=True) * 2).sum())
        assert not gc.isenabled()
    finally:
        gc.enable()
    trace((torch.ones(2, requires_grad=True) * 2).sum())
    assert gc.isenabled()


def test_public_api_is_explicit():
    assert set(gradgraph.__all__) >= {"trace", "GradGraph"}
