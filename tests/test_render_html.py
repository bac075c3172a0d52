"""to_html / Jupyter reprs: self-contained, escaped, details match the graph."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import torch

from gradgraph import trace
from gradgraph.render.html import NOTEBOOK_MAX_NODES

from .cases import mlp
from .test_render_collapse import chain_graph

DATA = re.compile(
    r'<script type="application/json" class="gg-data">(.*?)</script>', re.S
)


def details(page: str) -> dict:
    return json.loads(DATA.search(page).group(1))["nodes"]


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
    svg_nodes = set(re.findall(r'<g id="(n\d+)" class="node', page))
    assert svg_nodes == {f"n{n}" for n in g.dag}


def test_details_match_the_graph():
    out, kw = mlp()
    g = trace(out, **kw)
    g.dag.nodes[0]["source"] = "train.py:3 in step: loss = mse(model(x), y)"
    info = details(g.to_html(show_saved=True))
    for node, data in g.dag.nodes(data=True):
        d = info[f"n{node}"]
        assert d["op"] == data["op"] and d.get("seq_nr") == data["seq_nr"]
        assert d.get("name") == data["name"] and d["dtype"] == data["dtype"]
        assert [s["attr"] for s in d.get("saved", [])] == [
            s["attr"] for s in data["saved"]
        ]
        for i, s in enumerate(data["saved"]):
            assert info[f"n{node}s{i}"]["attr"] == s["attr"]
    assert info["n0"]["source"].startswith("train.py:3")


def test_user_strings_cannot_break_out_of_the_page():
    w = torch.randn(3, requires_grad=True)
    evil = "</script><script>alert(1)</script>\u2028\"'&"
    g = trace((w * 2).sum(), params={evil: w})
    g.dag.nodes[0]["module"] = evil
    page = g.to_html(title=evil)
    assert "<script>alert(1)" not in page
    assert page.count("<script") == 2  # the data block and the viewer
    assert details(page)["n2"]["name"] == evil  # the JSON round-trips exactly


def test_jupyter_reprs_fold_big_graphs():
    g = chain_graph(1000)
    frag = g._repr_html_()
    assert frag.startswith('<div class="gg-root"') and "<html" not in frag
    boxes = g._repr_svg_().count('class="node')
    assert NOTEBOOK_MAX_NODES / 4 <= boxes <= NOTEBOOK_MAX_NODES  # the budget is used
    assert f"drawn as {boxes} boxes" in frag


def test_dark_theme_page():
    out, kw = mlp()
    page = trace(out, **kw).to_html(theme="dark")
    assert "--gg-bg:#0d1117" in page and "background:#0d1117" in page
