"""One self-contained interactive page: the SVG, pan/zoom, search, details.

The page needs no network: the viewer's JavaScript and CSS (``assets/``) are
inlined, the node facts travel as a JSON block whose ``<``, ``>`` and ``&``
are escaped, and the script writes every user string with ``textContent``, so
a parameter named ``<script>alert(1)</script>`` shows as text. Hovering a
node previews its details (op, shapes, dtype, saved tensors, seq_nr,
derivative order, module, and the forward source line when the node has a
``source`` or ``traceback`` entry); clicking pins them and highlights its
edges. The same fragment is what Jupyter shows through ``_repr_html_``.

Example:
    >>> import torch
    >>> from gradgraph import trace
    >>> x = torch.ones(2, requires_grad=True)
    >>> page = to_html(trace((x * 3).sum(), names={x: "x"}))
    >>> page.startswith("<!doctype html>"), "http" in page.split("<svg")[0]
    (True, False)
"""

from __future__ import annotations

import hashlib
import html
import json
import os
from importlib.resources import files

from ..graph import GradGraph
from ..nodes import OP
from .dot import dot_lines, dot_source, drawn_graph, pipe, write_file
from .style import FREED, SAVED, Theme, style_kind
from .style import theme as get_theme
from .text import shape_text

NOTEBOOK_MAX_NODES = 300
HINT = "Hover or click a node for details. Drag to pan, scroll to zoom."
_JSON_ESCAPES = {
    ord("<"): "\\u003c",
    ord(">"): "\\u003e",
    ord("&"): "\\u0026",
    0x2028: "\\u2028",
    0x2029: "\\u2029",
}


def _asset(name: str) -> str:
    return files("gradgraph.render").joinpath("assets", name).read_text("utf-8")


def script_json(value: object) -> str:
    """JSON safe to put inside a ``<script>`` element (no ``</script>`` breakout).

    Example:
        >>> script_json({"name": "</script>"})
        '{"name": "\\\\u003c/script\\\\u003e"}'
    """
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, default=list)
    return text.translate(_JSON_ESCAPES)


def _shape(dtype: str | None, shape: tuple | None) -> str | None:
    return None if shape is None else shape_text(dtype, shape)


def node_details(drawn: GradGraph, show_saved: bool = False) -> dict[str, dict]:
    """What the details panel shows, keyed by the SVG element id (``n<id>``)."""
    out: dict[str, dict] = {}
    for node, data in sorted(drawn.dag.nodes(data=True)):
        info = {
            "op": data["op"],
            "kind": style_kind(data),
            "name": data.get("name"),
            "module": data.get("module"),
            "shape": _shape(data.get("dtype"), data.get("shape")),
            "dtype": data.get("dtype"),
            "seq_nr": data.get("seq_nr"),
            "order": data.get("order"),
            "label": data.get("label"),
        }
        if data.get("shapes"):
            info["shapes"] = [_shape(data["dtype"], s) for s in data["shapes"]]
        for key in ("source", "traceback"):
            if data.get(key):
                info[key] = data[key]
        if "ops" in data:
            info["members"] = len(data["members"])
            info["ops"] = data["ops"]
        saved = [_saved(fact) for fact in data.get("saved") or ()]
        if saved:
            info["saved"] = saved
            if show_saved:
                for i, fact in enumerate(saved):
                    out[f"n{node}s{i}"] = fact
        out[f"n{node}"] = {k: v for k, v in info.items() if v is not None}
    return out


def _saved(fact: dict) -> dict:
    info = {"attr": fact["attr"], "freed": fact["freed"]}
    info["kind"] = FREED if fact["freed"] else SAVED
    if not fact["freed"]:
        info["shape"] = shape_text(fact["dtype"], fact["shape"])
        info["nbytes"] = fact["nbytes"]
        if fact.get("of"):
            info["of"] = fact["of"]
    return info


def _css_vars(look: Theme, height: str) -> str:
    values = {
        "bg": look.background,
        "text": look.text,
        "muted": look.muted,
        "border": look.kinds[OP]["color"],
        "panel": look.panel,
        "highlight": look.highlight,
        "height": height,
    }
    return ";".join(f"--gg-{k}:{v}" for k, v in values.items())


def html_fragment(
    graph: GradGraph,
    *,
    theme: str | Theme = "light",
    collapse: str | bool | None = None,
    max_nodes: int | None = None,
    show_saved: bool = False,
    edge_labels: bool = False,
    flow: str = "forward",
    title: str | None = None,
    height: str = "80vh",
) -> str:
    """The viewer as one ``<div>`` (styles and script inside it)."""
    look = get_theme(theme)
    drawn = drawn_graph(graph, collapse, max_nodes)
    dot = dot_source(dot_lines(drawn, look, edge_labels, show_saved, True, flow))
    svg = pipe(dot, "svg").decode("utf-8")
    svg = svg[svg.index("<svg") :]
    uid = "gg-" + hashlib.sha1(dot.encode("utf-8")).hexdigest()[:12]
    caption = title if title is not None else _caption(graph, drawn)
    data = {"nodes": node_details(drawn, show_saved)}
    return (
        f'<div class="gg-root" id="{uid}" style="{_css_vars(look, height)}">'
        f"<style>{_asset('viewer.css')}</style>"
        f'<div class="gg-bar"><b>{html.escape(caption)}</b>'
        '<input class="gg-search" type="search" placeholder="search op, name, module"'
        ' aria-label="search nodes"><span class="gg-count"></span>'
        '<button class="gg-fit" type="button">fit</button></div>'
        f'<div class="gg-main"><div class="gg-canvas">{svg}</div>'
        f'<aside class="gg-details"><p>{HINT}</p></aside></div>'
        f'<script type="application/json" class="gg-data">{script_json(data)}</script>'
        f"<script>{_asset('viewer.js').rstrip()}"
        f'(document.getElementById("{uid}"));</script></div>'
    )


def _caption(graph: GradGraph, drawn: GradGraph) -> str:
    n, e = graph.dag.number_of_nodes(), graph.dag.number_of_edges()
    text = f"autograd graph · {n:,} nodes · {e:,} edges"
    if drawn is not graph:
        text += f" · drawn as {drawn.dag.number_of_nodes():,} boxes"
    return text


def to_html(graph: GradGraph, path: str | os.PathLike | None = None, **options) -> str:
    """A complete, self-contained HTML page; written to ``path`` when given.

    Options as in :func:`html_fragment` (``theme``, ``collapse``, ``max_nodes``,
    ``show_saved``, ``edge_labels``, ``flow``, ``title``).
    """
    options.setdefault("height", "100vh")
    look = get_theme(options.get("theme", "light"))
    fragment = html_fragment(graph, **options)
    page = (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(options.get('title') or 'gradgraph')}</title>"
        f"<style>body{{margin:0;background:{look.background}}}"
        ".gg-root{border:0;border-radius:0}</style></head>"
        f"<body>{fragment}</body></html>\n"
    )
    if path is not None:
        write_file(path, page.encode("utf-8"))
    return page


def notebook_html(graph: GradGraph) -> str:
    """What Jupyter shows: the viewer, folded to at most ``NOTEBOOK_MAX_NODES``."""
    return html_fragment(graph, max_nodes=NOTEBOOK_MAX_NODES, height="520px")
