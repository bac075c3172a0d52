"""Folding by the module tree: budgets, ×N repeats, depth, DAG, render checks.

Box counts and structure only; no wall-clock assertions (the timeouts below
only stop a hang).
"""

from __future__ import annotations

import re
import stat

import networkx as nx
import pytest
import torch
import torch.nn as nn

from gradgraph import DotFailedError, record_modules, trace
from gradgraph.examples import tiny_models
from gradgraph.render import dot as dot_module
from gradgraph.render.collapse import collapse, member_box
from gradgraph.render.dot import drawn_graph, pipe, to_dot
from gradgraph.render.fold import DEFAULT_MAX_NODES, node_modules
from gradgraph.render.html import NOTEBOOK_MAX_NODES

from .test_render_budget import assert_folded_well, repeats


def mlp_graph(layers: int, record: bool):
    torch.manual_seed(0)
    model = nn.Sequential(
        *[m for _ in range(layers) for m in (nn.Linear(4, 4), nn.Tanh())]
    )
    x = torch.randn(2, 4)
    if not record:
        return trace(model(x).pow(2).mean(), model=model)
    with record_modules(model) as rec:
        out = model(x).pow(2).mean()
    return trace(out, model=model, modules=rec)


def gpt2_graph(layers: int, record: bool):
    pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = tiny_models.gpt2(layers=layers).eval()
    ids = torch.randint(0, 64, (1, 8))
    if not record:
        return trace(model(ids).logits.pow(2).mean(), model=model)
    with record_modules(model) as rec:
        out = model(ids).logits.pow(2).mean()
    return trace(out, model=model, modules=rec)


def drawn_boxes(dot_text: str) -> int:
    return len(re.findall(r"^\s*n\d+ \[id=n\d+ ", dot_text, flags=re.M))


@pytest.mark.parametrize("record", [False, True])
def test_1500_layer_mlp_folds_into_a_block_and_a_repeat(record):
    graph = mlp_graph(1_500, record)
    assert len(graph) > 7_000
    small = collapse(graph, None, max_nodes=300)
    assert_folded_well(graph, small, 300)
    (rest,) = repeats(small).values()
    assert rest["repeat"] >= 1_497  # every Linear+Tanh pair after the first
    assert rest["ops"]["AddmmBackward0"] == rest["repeat"]
    assert drawn_boxes(to_dot(graph, max_nodes=300)) == len(small)


def test_parameter_names_give_modules_when_none_were_recorded():
    graph = mlp_graph(3, record=False)
    modules = node_modules(graph)
    for node, data in graph.dag.nodes(data=True):
        if data["op"] in ("AddmmBackward0", "TBackward0"):
            params = {
                graph.dag.nodes[v]["name"]
                for v in nx.descendants(graph.dag, node) | {node}
                if graph.dag.nodes[v]["kind"] == "accumulate"
                and graph.dag.nodes[v]["name"]
            }
            # the op reads the parameters of its own layer (and earlier ones)
            assert f"{modules[node]}.bias" in params or data["op"] == "TBackward0"
    assert set(modules.values()) == {"0", "2", "4"}


@pytest.mark.parametrize("record", [False, True])
@pytest.mark.parametrize("layers", [2, 12])
def test_gpt2_default_picture_fits_the_budget(layers, record):
    graph = gpt2_graph(layers, record)
    small = drawn_graph(graph, None, DEFAULT_MAX_NODES)
    assert_folded_well(graph, small, DEFAULT_MAX_NODES)
    labels = set(repeats(small))
    if layers == 12:
        assert labels == {"transformer.h.1–11 ×11"}
    # a folded picture is the same on every run
    assert to_dot(graph, max_nodes=DEFAULT_MAX_NODES) == to_dot(
        gpt2_graph(layers, record), max_nodes=DEFAULT_MAX_NODES
    )


@pytest.mark.parametrize("record", [False, True])
def test_depth_one_shows_the_top_level(record):
    graph = gpt2_graph(12, record)
    full = collapse(graph, None, max_nodes=DEFAULT_MAX_NODES)
    top = collapse(graph, None, max_nodes=DEFAULT_MAX_NODES, depth=1)
    assert_folded_well(graph, top, DEFAULT_MAX_NODES)
    assert len(top) < len(full) / 3
    modules = [
        d["module"] for _, d in top.dag.nodes(data=True) if d["kind"] == "module"
    ]
    assert modules and all(".attn" not in m and ".mlp" not in m for m in modules)
    with pytest.raises(ValueError, match="depth"):
        collapse(graph, None, depth=0)


class Twice(nn.Module):
    """Module ``a`` runs twice with ``b`` between: folding ``a`` whole would
    make a cycle a -> b -> a."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)

    def forward(self, x):
        return self.a(self.b(self.a(x)).tanh())


def test_a_box_that_would_form_a_cycle_is_split():
    torch.manual_seed(0)
    model = Twice()
    with record_modules(model) as rec:
        out = model(torch.randn(2, 4)).sum()
    graph = trace(out, model=model, modules=rec)
    for depth in (1, 2, None):
        small = collapse(graph, None, max_nodes=3, depth=depth)
        assert nx.is_directed_acyclic_graph(small.dag)
        box = member_box(small)
        for u, v in graph.dag.edges:
            assert box[u] == box[v] or small.dag.has_edge(box[u], box[v])


def test_a_one_node_box_says_one_node():
    graph = mlp_graph(2, record=True)
    text = to_dot(collapse(graph, "modules"))
    assert "1 node<" in text or "1 node " in text
    assert "1 nodes" not in text


def test_render_infers_the_format_from_the_suffix(tmp_path):
    graph = mlp_graph(2, record=False)
    assert (tmp_path / "g.png").exists() is False
    graph.render(tmp_path / "g.png")
    assert (tmp_path / "g.png").read_bytes().startswith(b"\x89PNG")
    graph.render(tmp_path / "g.svg")
    assert b"<svg" in (tmp_path / "g.svg").read_bytes()
    graph.render(tmp_path / "g.dot")
    assert (tmp_path / "g.dot").read_text().startswith("digraph")
    with pytest.raises(ValueError, match="does not match"):
        graph.render(tmp_path / "h.svg", format="png")
    with pytest.raises(ValueError, match="cannot tell the picture format"):
        graph.render(tmp_path / "h.txt")
    assert not (tmp_path / "h.svg").exists() and not (tmp_path / "h.txt").exists()


def test_a_bad_path_fails_before_any_layout(tmp_path, monkeypatch):
    graph = mlp_graph(1_500, record=False)

    def no_layout(*args, **kwargs):
        raise AssertionError("laid out before checking the path")

    monkeypatch.setattr(dot_module, "to_dot", no_layout)
    for path in (tmp_path / "missing" / "g.svg", tmp_path / "g.nope", tmp_path):
        with pytest.raises(ValueError):
            graph.render(path)


def fake_dot(tmp_path, body: str) -> str:
    script = tmp_path / "dot"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script)


def test_a_dot_that_overruns_or_dies_is_a_clear_error(tmp_path, monkeypatch):
    text = to_dot(mlp_graph(2, record=False))
    monkeypatch.setattr(
        dot_module.graphviz, "DOT_BINARY", fake_dot(tmp_path, "sleep 60")
    )
    with pytest.raises(DotFailedError, match="did not finish within 1 s.*max_nodes"):
        pipe(text, "svg", timeout=1)
    monkeypatch.setattr(
        dot_module.graphviz, "DOT_BINARY", fake_dot(tmp_path, "kill -9 $$")
    )
    with pytest.raises(DotFailedError, match="killed by signal 9"):
        pipe(text, "svg")


def test_big_drawings_bound_dots_effort():
    graph = mlp_graph(100, record=False)
    assert "nslimit" in to_dot(graph)  # 500 nodes, all drawn
    assert "nslimit" not in to_dot(graph, max_nodes=DEFAULT_MAX_NODES)


def test_default_render_and_notebook_fold_to_the_budget(tmp_path):
    graph = mlp_graph(300, record=False)
    svg = graph.to_svg()
    assert svg.count('class="node') <= DEFAULT_MAX_NODES
    assert graph._repr_svg_().count('class="node') <= NOTEBOOK_MAX_NODES
    everything = graph.to_svg(max_nodes=None)
    assert everything.count('class="node') == len(graph)
