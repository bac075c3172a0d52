"""collapse(): chains and modules folded, reachability kept, max_nodes met."""

from __future__ import annotations

import networkx as nx
import pytest
import torch
import torch.nn as nn

from gradgraph import record_modules, trace
from gradgraph.render.collapse import collapse, member_box

from .cases import GRAPHS


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)

    def forward(self, x):
        return x + torch.tanh(self.norm(self.lin(x)))


class Net(nn.Module):
    def __init__(self, blocks: int):
        super().__init__()
        self.encoder = nn.Sequential(*[Block() for _ in range(blocks)])
        self.head = nn.Linear(4, 1)

    def forward(self, x):
        return self.head(self.encoder(x) * 2)


def net_graph(blocks: int = 6):
    torch.manual_seed(0)
    model = Net(blocks)
    with record_modules(model) as rec:
        out = model(torch.randn(2, 4)).pow(2).mean()
    return trace(out, model=model, modules=rec)


def chain_graph(n: int):
    x = torch.ones(2, requires_grad=True)
    y = x
    for i in range(n):
        y = y.sin() if i % 2 else y * 1.5
    return trace(y.sum(), names={x: "x"})


def assert_keeps_reachability(graph, small):
    box = member_box(small)
    assert sorted(box) == sorted(graph.dag)  # every node is in exactly one box
    for u in graph.dag:
        below = {box[v] for v in nx.descendants(graph.dag, u)} - {box[u]}
        assert below <= nx.descendants(small.dag, box[u]), u


@pytest.mark.parametrize("mode", ["chains", "modules", True])
def test_collapse_keeps_reachability(mode):
    for graph in [net_graph(), chain_graph(50)] + [
        trace(*(o if isinstance(o, tuple) else (o,)), **kw)
        for o, kw in (f() for f in GRAPHS.values())
    ]:
        small = collapse(graph, mode)
        assert_keeps_reachability(graph, small)
        assert len(small) <= len(graph)


@pytest.mark.parametrize("max_nodes", [2, 5, 12, 40])
def test_max_nodes_is_met_and_reachability_kept(max_nodes):
    graph = net_graph(10)
    small = collapse(graph, None, max_nodes=max_nodes)
    assert len(small) <= max_nodes
    assert_keeps_reachability(graph, small)


def test_chain_folds_to_one_box_with_every_op_counted():
    graph = chain_graph(200)
    small = collapse(graph, "chains")
    kinds = sorted(d["kind"] for _, d in small.dag.nodes(data=True))
    assert kinds == ["accumulate", "chain", "root"]
    (box,) = [d for _, d in small.dag.nodes(data=True) if d["kind"] == "chain"]
    assert box["ops"] == {"MulBackward0": 100, "SinBackward0": 100}
    assert box["label"] == "MulBackward0 … SinBackward0"  # forward order
    assert small.roots == graph.roots


def test_short_chains_and_named_nodes_stay():
    graph = chain_graph(2)
    assert len(collapse(graph, "chains")) == len(graph)
    assert collapse(graph, "chains", min_chain=2).dag.number_of_nodes() == 3


def test_modules_fold_into_one_box_each_with_their_parameters():
    graph = net_graph(3)
    small = collapse(graph, "modules")
    boxes = {
        d["module"]: d for _, d in small.dag.nodes(data=True) if d["kind"] == "module"
    }
    recorded = {m for _, m in graph.dag.nodes(data="module") if m}
    assert set(boxes) == recorded
    lin = boxes["encoder.1.lin"]
    assert lin["ops"] == {"AccumulateGrad": 2, "AddmmBackward0": 1, "TBackward0": 1}
    names = {graph.dag.nodes[m]["name"] for m in lin["members"]} - {None}
    assert names == {"encoder.1.lin.weight", "encoder.1.lin.bias"}


def test_bad_collapse_options():
    graph = chain_graph(3)
    with pytest.raises(ValueError, match="collapse mode"):
        collapse(graph, "everything")
    with pytest.raises(ValueError, match="max_nodes"):
        collapse(graph, None, max_nodes=1)


def test_record_modules_removes_its_hooks_even_on_error():
    model = Net(2)

    def hooks():
        return sum(
            len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()
        )

    with pytest.raises(ZeroDivisionError):
        with record_modules(model):
            assert hooks() > 0
            model(torch.randn(1, 4))
            raise ZeroDivisionError
    assert hooks() == 0
    with pytest.raises(TypeError, match="nn.Module"):
        with record_modules("model"):
            pass


def test_record_modules_names_the_innermost_module():
    graph = net_graph(2)
    by_op = {}
    for _, d in graph.dag.nodes(data=True):
        by_op.setdefault(d["op"], set()).add(d.get("module"))
    assert by_op["NativeLayerNormBackward0"] == {"encoder.0.norm", "encoder.1.norm"}
    assert by_op["TanhBackward0"] == {"encoder.0", "encoder.1"}
    assert by_op["MeanBackward0"] == {None}  # created outside the model
    assert by_op["AddmmBackward0"] == {"encoder.0.lin", "encoder.1.lin", "head"}


def test_record_modules_leaves_backward_created_nodes_alone():
    torch.manual_seed(0)
    model = Net(2)
    with record_modules(model) as rec:
        loss = model(torch.randn(2, 4)).pow(2).mean()
    forward = trace(loss, model=model, modules=rec, keep=True)
    grads = torch.autograd.grad(loss, list(model.parameters()), create_graph=True)
    both = trace(*grads, model=model, modules=rec, keep=True)
    owner = {
        id(forward.grad_fn(n)): d.get("module") for n, d in forward.dag.nodes(data=True)
    }
    for node, data in both.dag.nodes(data=True):
        fn = id(both.grad_fn(node))
        assert data.get("module") == owner.get(fn), data["op"]
    assert any(id(both.grad_fn(n)) not in owner for n in both.dag)  # backward nodes
