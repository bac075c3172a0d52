"""to_html / Jupyter reprs: self-contained, escaped, data match the graph."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import gradgraph.render.html as viewer
from gradgraph import trace
from gradgraph.render.collapse import collapse, member_box
from gradgraph.render.html import (
    BOX_FIELDS,
    NODE_FIELDS,
    NOTEBOOK_MAX_NODES,
    fold_tree,
)

from .cases import mlp
from .test_render_collapse import chain_graph

DATA = re.compile(
    r'<script type="application/json" class="gg-data">(.*?)</script>', re.S
)


def page_data(page: str) -> dict:
    return json.loads(DATA.search(page).group(1))


def nodes(data: dict) -> list[dict]:
    """The node columns as one dict per node, strings resolved."""
    strings, width = data["strings"], len(NODE_FIELDS)
    flat = data["nodes"]
    out = []
    for i in range(0, len(flat), width):
        row = dict(zip(NODE_FIELDS, flat[i : i + width], strict=True))
        for key in ("title", "lines", "kind", "op", "name", "module", "shape"):
            row[key] = None if row[key] < 0 else strings[row[key]]
        out.append(row)
    return out


PROGRAM = """
import sys
from tests.cases import mlp
from gradgraph import trace
out, kw = mlp()
trace(out, **kw).to_html(sys.argv[1], show_saved=True)
"""


def test_page_is_byte_identical_run_to_run(tmp_path):
    # seq_nr counts ops per process, so "run to run" means two fresh processes
    root = Path(__file__).resolve().parent.parent
    for name in ("a.html", "b.html"):
        subprocess.run(
            [sys.executable, "-c", PROGRAM, str(tmp_path / name)], cwd=root, check=True
        )
    page = (tmp_path / "a.html").read_bytes()
    assert page == (tmp_path / "b.html").read_bytes() and b"<svg" in page


def test_page_is_self_contained(tmp_path):
    out, kw = mlp()
    g = trace(out, **kw)
    page = g.to_html(tmp_path / "a.html")
    assert page == (tmp_path / "a.html").read_text("utf-8")
    no_namespaces = re.sub(r'xmlns(:\w+)?="[^"]*"', "", page)
    for needle in ("http://", "https://", "<link", " src=", "@import", "url("):
        assert needle not in no_namespaces, needle
    assert "dagre" in page and "MIT" in page  # the layout library, licence kept
    static = page[page.index('<div class="gg-static"') : page.index("</svg>")]
    assert static.count('class="node') == len(g)  # the no-JS picture
    assert len(nodes(page_data(page))) == len(g)


def test_node_data_match_the_graph():
    out, kw = mlp()
    g = trace(out, **kw)
    g.dag.nodes[0]["source"] = "train.py:3 in step: loss = mse(model(x), y)"
    data = page_data(g.to_html(show_saved=True))
    assert data["ids"] is None  # ids are 0..N-1: not repeated
    for i, (node, row) in enumerate(zip(sorted(g.dag), nodes(data), strict=True)):
        facts = g.dag.nodes[node]
        assert i == node and row["op"] == facts["op"]
        seq = facts["seq_nr"]
        assert row["seq_nr"] == (-1 if seq is None else seq)
        assert row["name"] == facts.get("name")
        saved = data["extra"].get(str(i), {}).get("saved", [])
        attrs = [data["strings"][s[0]] for s in saved]
        assert attrs == [s["attr"] for s in facts["saved"]]
    assert data["extra"]["0"]["source"].startswith("train.py:3")
    edges = data["edges"]  # drawn input -> consumer: DAG edge u -> v is (v, u)
    pairs = {(edges[k + 1], edges[k]) for k in range(0, len(edges), 2)}
    assert pairs == set(g.dag.edges)


def test_user_strings_cannot_break_out_of_the_page():
    w = torch.randn(3, requires_grad=True)
    evil = "</script><script>alert(1)</script>\u2028\"'&"
    g = trace((w * 2).sum(), params={evil: w})
    g.dag.nodes[0]["module"] = evil
    page = g.to_html(title=evil)
    assert "<script>alert(1)" not in page
    assert page.count("<script") == 2  # the data block and the viewer
    assert evil in page_data(page)["strings"]  # the JSON round-trips exactly


def test_fold_tree_nests_every_node_under_the_drawn_boxes():
    g = chain_graph(1000)
    drawn = collapse(g, None, max_nodes=40)
    parent, boxes = fold_tree(g, drawn, budget=12)
    order = sorted(g.dag)
    n = len(order)
    assert all(up < n + k for k, (_, up) in enumerate(boxes))  # parents first
    top = {}
    for box, (_data, up) in enumerate(boxes, start=n):
        top[box] = box if up < 0 else top[up]
    outer = member_box(drawn)
    for i, node in enumerate(order):
        if parent[i] < 0:
            assert outer[node] == node  # drawn as itself
        else:
            assert boxes[top[parent[i]] - n][0] is drawn.dag.nodes[outer[node]]
    under = [0] * len(boxes)  # nodes below each box, counted through the tree
    for i in range(n):
        up = parent[i]
        while up >= 0:
            under[up - n] += 1
            up = boxes[up - n][1]
    assert under == [len(d["members"]) for d, _ in boxes]
    children = [0] * len(boxes)
    for up in [*parent, *(u for _, u in boxes)]:
        if up >= 0:
            children[up - n] += 1
    assert max(children) <= 12  # each unfolds into at most the budget


def test_box_rows_list_their_members_and_ops():
    g = chain_graph(300)
    data = page_data(g.to_html(max_nodes=20))
    assert data["boxes"] and all(len(b) == len(BOX_FIELDS) for b in data["boxes"])
    for box in data["boxes"]:
        ops = box[BOX_FIELDS.index("ops")]
        assert sum(ops[1::2]) == box[BOX_FIELDS.index("members")]


def test_bad_path_fails_before_any_layout(tmp_path, monkeypatch):
    def no_layout(*args, **kwargs):
        raise AssertionError("laid out before checking the path")

    monkeypatch.setattr(viewer, "drawn_graph", no_layout)
    with pytest.raises(ValueError, match="cannot write"):
        chain_graph(10).to_html(tmp_path / "missing" / "a.html")
    with pytest.raises(AssertionError, match="laid out"):
        chain_graph(10).to_html(tmp_path / "a.html")
    assert not (tmp_path / "a.html").exists()  # no empty page left behind


def test_big_graphs_leave_saved_tensors_out_unless_asked(monkeypatch):
    monkeypatch.setattr(viewer, "SAVED_UP_TO", 5)
    out, kw = mlp()
    g = trace(out, **kw)
    plain = page_data(g.to_html())
    asked = page_data(g.to_html(show_saved=True))
    assert not any("saved" in e for e in plain["extra"].values())
    assert sum("saved" in e for e in asked["extra"].values()) >= 3


def test_jupyter_reprs_fold_big_graphs():
    g = chain_graph(1000)
    frag = g._repr_html_()
    assert frag.startswith('<div class="gg-root"') and "<html" not in frag
    boxes = g._repr_svg_().count('class="node')
    assert NOTEBOOK_MAX_NODES / 4 <= boxes <= NOTEBOOK_MAX_NODES  # the budget is used
    assert f"drawn as {boxes} boxes" in frag


def test_each_display_has_its_own_id():
    g = chain_graph(20)
    ids = {re.search(r'class="gg-root" id="([^"]+)"', g._repr_html_())[1]}
    ids.add(re.search(r'class="gg-root" id="([^"]+)"', g._repr_html_())[1])
    assert len(ids) == 2


def test_dark_theme_page():
    out, kw = mlp()
    page = trace(out, **kw).to_html(theme="dark")
    assert "--gg-bg:#0d1117" in page and "background:#0d1117" in page
