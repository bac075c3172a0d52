"""DOT/SVG: style kinds, order bands, themes, escaping, determinism, missing dot."""

from __future__ import annotations

import html
import re

import pytest
import torch
import torch.nn as nn

from gradgraph import DotNotFoundError, trace
from gradgraph.render.collapse import collapse
from gradgraph.render.style import KINDS, THEMES, node_style

from .cases import GRAPHS, mlp, seed_linear_linear

NASTY = [
    "<script>alert(1)</script>",
    "say \"hi\" & 'bye'",
    "two\nlines\\n and a backslash \\",
    "ünïcødé 层 ∂L/∂w 🙂",
    "a]b[c{d}e;f=g",
]


def kinds_in(svg: str) -> set[str]:
    return set(re.findall(r'class="node ([\w-]+)"', html.unescape(svg)))


def sample_with_every_kind():
    """Graphs that between them show each style kind once rendered."""
    torch.manual_seed(0)
    model = nn.Linear(3, 3)
    x = torch.randn(2, 3, requires_grad=True)  # an unnamed leaf: leaf-input
    y = model(x).tanh()
    for _ in range(5):
        y = y * 1.5
    loss = y.pow(2).sum()
    live = trace(loss, model=model)
    loss.backward()
    freed = trace(loss, model=model)
    for data in live.dag.nodes.values():
        if data["op"] in ("AddmmBackward0", "TBackward0"):
            data["module"] = "layer"
    return [
        live.to_svg(show_saved=True),
        freed.to_svg(show_saved=True),
        collapse(live, True).to_svg(),
        collapse(live, None, max_nodes=3).to_svg(),
    ]


def test_every_style_kind_appears_in_a_rendered_sample():
    seen = set().union(*(kinds_in(svg) for svg in sample_with_every_kind()))
    assert seen == set(KINDS)


def test_style_table_covers_every_kind_in_both_themes():
    for name, look in THEMES.items():
        assert set(look.kinds) == set(KINDS), name
        fills = {node_style(k, name)["fillcolor"] for k in KINDS}
        assert len(fills) == len(KINDS)  # every kind looks different
    with pytest.raises(ValueError, match="known kinds"):
        node_style("nope")
    with pytest.raises(ValueError, match="unknown theme"):
        trace((torch.ones(1, requires_grad=True) * 2).sum()).to_dot(theme="sepia")


def test_themes_use_their_own_colours():
    out, kw = seed_linear_linear()
    g = trace(out, **kw)
    for name, look in THEMES.items():
        dot = g.to_dot(theme=name)
        assert look.background in dot and look.kinds["accumulate"]["fillcolor"] in dot


@pytest.mark.parametrize("case", sorted(GRAPHS))
def test_dot_and_svg_are_byte_identical_run_to_run(case):
    def build():
        out, kw = GRAPHS[case]()
        return trace(*(out if isinstance(out, tuple) else (out,)), **kw)

    a, b = build(), build()
    opts = {"show_saved": True, "edge_labels": True}
    assert a.to_dot(**opts) == b.to_dot(**opts)
    assert a.to_svg(**opts) == b.to_svg(**opts)


def test_edge_labels_give_input_nr_and_shape():
    out, kw = seed_linear_linear()
    g = trace(out, **kw)
    dot = g.to_dot(edge_labels=True)
    for u, v, data in g.dag.edges(data=True):
        shape = ",".join(map(str, g.dag.nodes[v]["shape"]))
        pattern = rf"\tn{v} -> n{u} \[label=<.*?>{data['input_nr']}: \[{shape}\]<"
        assert re.search(pattern, dot), (u, v)


@pytest.mark.parametrize("name", NASTY)
def test_user_strings_are_escaped_in_dot_and_svg(name):
    torch.manual_seed(0)
    w = torch.randn(3, requires_grad=True)
    g = trace((w * 2).sum(), params={name: w})
    g.dag.nodes[0]["module"] = name
    dot = g.to_dot()
    assert "<script>" not in dot
    svg = g.to_svg()  # dot parses it
    assert "<script" not in svg.split("<svg", 1)[1]
    text = " ".join(re.findall(r"<text[^>]*>([^<]*)</text>", svg))
    shown = html.unescape(text)
    for part in name.split("\n"):
        assert part in shown


def test_order_bands_one_cluster_per_order():
    x = torch.tensor([1.5], requires_grad=True)
    (g1,) = torch.autograd.grad(x**3, x, create_graph=True)
    (g2,) = torch.autograd.grad(g1, x, create_graph=True)
    g = trace(g2, x**3, names={x: "x"})
    for data in g.dag.nodes.values():
        data["order"] = 0 if data["op"] in ("PowBackward0", "AccumulateGrad") else 1
    dot = g.to_dot()
    assert dot.count("subgraph cluster_order") == 2
    assert "order 0 · forward graph" in dot and "order 1 · gradient graph" in dot
    body = dot.split("subgraph cluster_order1", 1)[1]
    ones = [n for n, d in g.dag.nodes(data=True) if d["order"] == 1]
    assert all(f"\tn{n} [" in body for n in ones)
    assert "cluster_order" not in trace(x**3).to_dot()


def test_flow_and_title_and_bad_flow():
    out, kw = mlp()
    g = trace(out, **kw)
    u, v = next(iter(g.dag.edges))
    assert f"\tn{v} -> n{u}\n" in g.to_dot()  # forward: input -> consumer
    assert f"\tn{u} -> n{v}\n" in g.to_dot(flow="backward")  # next_functions
    assert "my &lt;title&gt;" in g.to_dot(title="my <title>")
    with pytest.raises(ValueError, match="forward"):
        g.to_dot(flow="sideways")


def test_missing_dot_binary_names_the_install_command(tmp_path, monkeypatch):
    out, kw = mlp()
    g = trace(out, **kw)
    monkeypatch.setenv("PATH", str(tmp_path))
    for call in (g.to_svg, lambda: g.render(tmp_path / "a.png", format="png")):
        with pytest.raises(DotNotFoundError, match="apt-get install graphviz"):
            call()
    with pytest.raises(DotNotFoundError, match="conda install graphviz"):
        g.to_html(tmp_path / "a.html")
    assert g.to_dot() and g.to_text() and g.to_json()
