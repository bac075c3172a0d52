"""max_nodes uses its budget on big graphs: between N/4 and N boxes, paths kept.

Each big graph (a 20,000-node Sequential of Linear+Tanh, a 100,000-node chain,
a Sequential of blocks with submodules, and a wide container of parallel
branches) is traced once per module. Before this rule the Sequential folded to
3 boxes for any max_nodes.
"""

from __future__ import annotations

import random
import re
from collections import Counter

import networkx as nx
import pytest
import torch
import torch.nn as nn

from gradgraph import record_modules, trace
from gradgraph.render.collapse import collapse, member_box, parameter_module
from gradgraph.render.dot import to_dot

from .test_render_collapse import Net, chain_graph

SPAN = re.compile(
    r"^(?P<prefix>(?:.*\.)?)(?P<first>\d+)–(?P<last>\d+) \((?P<k>\d+) modules\)"
)


class Branches(nn.Module):
    """Parallel branches summed in this module's own forward."""

    def __init__(self, width: int):
        super().__init__()
        self.branch = nn.ModuleList(
            nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4))
            for _ in range(width)
        )

    def forward(self, x):
        return torch.stack([b(x) for b in self.branch]).sum(0)


def traced(model: nn.Module, x: torch.Tensor):
    with record_modules(model) as rec:
        loss = model(x).pow(2).mean()
    return trace(loss, model=model, modules=rec)


@pytest.fixture(scope="module")
def big_graphs():
    torch.manual_seed(0)
    layers = [m for _ in range(4_000) for m in (nn.Linear(4, 4), nn.Tanh())]
    wide = nn.Sequential(nn.Linear(4, 4), Branches(2_000), nn.Linear(4, 1))
    return {
        "sequential": traced(nn.Sequential(*layers), torch.randn(2, 4)),
        "chain": chain_graph(100_000),
        "blocks": traced(Net(2_000), torch.randn(2, 4)),
        "wide": traced(wide, torch.randn(2, 4)),
    }


def module_of(data: dict, known: set[str]) -> str | None:
    if data.get("module"):
        return data["module"]
    if data["kind"] == "accumulate":
        return parameter_module(data.get("name"), known)
    return None


def assert_is_quotient(graph, small, pairs: int = 40):
    """Every node in one box, every edge kept, sampled paths kept."""
    box = member_box(small)
    assert sorted(box) == sorted(graph.dag)
    for u, v in graph.dag.edges:
        assert box[u] == box[v] or small.dag.has_edge(box[u], box[v]), (u, v)
    rng = random.Random(0)
    nodes = sorted(graph.dag)
    for u in rng.sample(nodes, pairs):
        below = sorted(nx.descendants(graph.dag, u))
        reach = nx.descendants(small.dag, box[u]) | {box[u]}
        for v in rng.sample(below, min(5, len(below))):
            assert box[v] in reach, (u, v)


def assert_labels_say_what_boxes_hold(graph, small):
    known = {m for _, m in graph.dag.nodes(data="module") if m}
    dot = to_dot(small)
    spans = 0
    for _, data in small.dag.nodes(data=True):
        if "members" not in data:
            continue
        held = Counter(graph.dag.nodes[m]["op"] for m in data["members"])
        assert data["ops"] == dict(held)
        title = data["module"] if data["kind"] == "module" else data["label"]
        assert title in dot
        if match := SPAN.match(title):
            spans += 1
            first, last = int(match["first"]), int(match["last"])
            assert int(match["k"]) == last - first + 1
            named = {match["prefix"] + str(i) for i in range(first, last + 1)}
            depth = match["prefix"].count(".") + 1
            held_modules = {
                ".".join(m.split(".")[:depth])
                for m in (module_of(graph.dag.nodes[n], known) for n in data["members"])
                if m
            }
            assert held_modules == named, title
    return spans


def assert_folded_well(graph, small, max_nodes: int) -> None:
    """Within budget, a quotient, a DAG, labels true, no "+N more" box."""
    assert len(small) <= max_nodes, len(small)
    assert small.roots == graph.roots
    assert nx.is_directed_acyclic_graph(small.dag)
    assert_is_quotient(graph, small)
    for _, data in small.dag.nodes(data=True):
        assert not str(data.get("label", "")).startswith("+")
        if "members" in data:
            held = Counter(graph.dag.nodes[m]["op"] for m in data["members"])
            assert data["ops"] == dict(held)


def repeats(small) -> dict[str, dict]:
    return {d["label"]: d for _, d in small.dag.nodes(data=True) if d.get("repeat")}


@pytest.mark.parametrize("max_nodes", [50, 200])
@pytest.mark.parametrize("name", ["sequential", "chain", "blocks", "wide"])
def test_big_graphs_fold_within_the_budget_as_a_dag(big_graphs, name, max_nodes):
    graph = big_graphs[name]
    assert len(graph) > 15_000
    small = collapse(graph, None, max_nodes=max_nodes)
    assert_folded_well(graph, small, max_nodes)
    assert "digraph" in to_dot(small)


def test_stacked_layers_fold_into_one_block_and_a_repeat(big_graphs):
    graph = big_graphs["sequential"]
    small = collapse(graph, None, max_nodes=200)
    (rest,) = repeats(small).values()
    # Linear+Tanh pairs: the first pair drawn, the other 3,999 rolled into one box
    assert rest["label"] == "2–7999 ×3999" and rest["repeat"] == 3_999
    held = {graph.dag.nodes[m].get("module") for m in rest["members"]} - {None}
    assert held == {str(i) for i in range(2, 8_000)}
    assert rest["ops"]["AddmmBackward0"] == 3_999
    assert rest["blocks"][0] == "2–3" and rest["blocks"][-1] == "7998–7999"


def test_blocks_of_a_model_roll_and_parallel_branches_do_not(big_graphs):
    small = collapse(big_graphs["blocks"], None, max_nodes=50)
    (rest,) = repeats(small).values()
    assert rest["label"] == "encoder.1–1999 ×1999"
    wide = collapse(big_graphs["wide"], None, max_nodes=50)
    assert not repeats(wide)  # 2,000 parallel branches are not a stack


def test_chain_pieces_fold_100k_nodes_into_the_budget(big_graphs):
    small = collapse(big_graphs["chain"], "chains", max_nodes=200)
    pieces = [d for _, d in small.dag.nodes(data=True) if d["kind"] == "chain"]
    assert 150 <= len(pieces) <= 200
    assert sum(len(d["members"]) for d in pieces) == 100_000  # all ops, x alone
    assert collapse(big_graphs["chain"], "chains").dag.number_of_nodes() == 3


def test_folding_to_a_budget_is_deterministic(big_graphs):
    one = collapse(big_graphs["blocks"], None, max_nodes=50)
    two = collapse(big_graphs["blocks"], None, max_nodes=50)
    assert list(one.dag.nodes(data="label")) == list(two.dag.nodes(data="label"))
    assert to_dot(one) == to_dot(two)
    for box, members in one.dag.nodes(data="members"):
        assert box == min(members or (box,))
