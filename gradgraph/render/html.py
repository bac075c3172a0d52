"""One self-contained interactive page: a folded graph that unfolds on click.

The page needs no network. It carries the whole graph as one JSON block (node
facts in columns, strings interned, ``<``, ``>`` and ``&`` escaped) and the
viewer's JavaScript with the dagre layout library (``assets/``, MIT) inlined.
The graph opens folded to ``max_nodes`` boxes (:mod:`.collapse`); clicking a
folded box unfolds it in place (its parts laid out by dagre in the browser),
clicking its frame folds it back; boxes bigger than ``EXPAND_BUDGET`` unfold
into at most that many smaller boxes first. Search finds any node, also inside
folded boxes, and Enter unfolds the boxes around it and zooms to it.

Without JavaScript (GitHub, nbviewer, an untrusted notebook) the same folded
graph shows as graphviz's full-size SVG in a scrolling box; the script replaces
it with the viewer. Every user string reaches the page through ``textContent``
or HTML escaping, so a parameter named ``<script>alert(1)</script>`` shows as
text. The same fragment is what Jupyter shows through ``_repr_html_``.

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
import itertools
import json
import os
import re
from functools import lru_cache
from importlib.resources import files

import networkx as nx

from ..graph import GradGraph
from ..nodes import OP
from .collapse import collapse as collapse_graph
from .dot import dot_lines, dot_source, drawn_graph, node_lines, pipe, write_file
from .fold import DEFAULT_MAX_NODES
from .style import Theme, order_band, style_kind
from .style import theme as get_theme
from .text import shape_text

NOTEBOOK_MAX_NODES = DEFAULT_MAX_NODES  # one budget for every default picture
VIEW_MAX_NODES = DEFAULT_MAX_NODES  # boxes when a page opens (max_nodes=None)
EXPAND_BUDGET = 40  # parts shown when one box unfolds
SAVED_UP_TO = 20_000  # bigger graphs list saved tensors only with show_saved=True
NODE_FIELDS = (
    "title",
    "lines",
    "kind",
    "parent",
    "op",
    "name",
    "module",
    "shape",
    "seq_nr",
    "order",
)
BOX_FIELDS = ("title", "lines", "kind", "parent", "members", "module", "ops", "order")
_JSON_ESCAPES = (
    ("<", "\\u003c"),
    (">", "\\u003e"),
    ("&", "\\u0026"),
    ("\u2028", "\\u2028"),
    ("\u2029", "\\u2029"),
)
_DISPLAYS = itertools.count()  # ids unique per display within a process
_SVG_IDS = re.compile(r' id="[^"]*"')


def _asset(name: str) -> str:
    return files("gradgraph.render").joinpath("assets", name).read_text("utf-8")


def script_json(value: object, compact: bool = False) -> str:
    """JSON safe to put inside a ``<script>`` element (no ``</script>`` breakout).

    Example:
        >>> script_json({"name": "</script>"})
        '{"name": "\\\\u003c/script\\\\u003e"}'
    """
    seps = (",", ":") if compact else None
    text = json.dumps(
        value, sort_keys=True, ensure_ascii=False, default=list, separators=seps
    )
    for char, escaped in _JSON_ESCAPES:
        text = text.replace(char, escaped)
    return text


class _Strings:
    """Interned strings: each distinct string is sent once, nodes hold indices."""

    def __init__(self):
        self.index: dict[str, int] = {}

    def __call__(self, text: object) -> int:
        if text is None or text == "":
            return -1
        text = str(text)
        found = self.index.get(text)
        if found is None:
            found = self.index[text] = len(self.index)
        return found

    def table(self) -> list[str]:
        return list(self.index)


def fold_tree(
    graph: GradGraph, drawn: GradGraph, budget: int = EXPAND_BUDGET
) -> tuple[list[int], list[tuple[dict, int]]]:
    """Nest the folds: each node's enclosing box, each box's enclosing box.

    ``drawn`` is ``graph`` folded (:func:`.collapse.collapse`). A box with more
    than ``budget`` members is folded again, on its own, into at most
    ``budget`` parts, and so on down. Returns ``parent`` (for each node of
    ``graph`` in sorted id order, its innermost box as ``len(graph) + k``, or
    -1) and ``boxes`` (``(data, parent)`` in that numbering, parents first).

    Example:
        >>> import torch
        >>> from gradgraph import trace
        >>> x = torch.ones(2, requires_grad=True)
        >>> y = x
        >>> for _ in range(30):
        ...     y = y.sin()
        >>> g = trace(y.sum())
        >>> parent, boxes = fold_tree(g, collapse_graph(g, "chains"), budget=8)
        >>> len(g), [len(d["members"]) for d, _ in boxes][:1], max(parent) >= len(g)
        (32, [30], True)
    """
    order = sorted(graph.dag)
    index = {n: i for i, n in enumerate(order)}
    parent = [-1] * len(order)
    boxes: list[tuple[dict, int]] = []
    queue = [(drawn, -1)]
    for level, up in queue:  # breadth first: a box comes after its parent
        for node, data in sorted(level.dag.nodes(data=True)):
            members = data.get("members")
            if not members or "ops" not in data:
                parent[index[node]] = up
                continue
            unit = len(order) + len(boxes)
            boxes.append((data, up))
            inner = _refold(graph, members, budget) if len(members) > budget else None
            if inner is None:
                for m in members:
                    parent[index[m]] = unit
            else:
                queue.append((inner, unit))
    return parent, boxes


def _refold(graph: GradGraph, members, budget: int) -> GradGraph | None:
    """The members of one box folded to ``budget`` parts (None: no progress)."""
    dag = _subgraph(graph.dag, members)
    roots = sorted(n for n in dag if not dag._pred[n])
    folded = collapse_graph(GradGraph(dag, roots, []), None, max_nodes=budget)
    if len(folded) <= 1 or len(folded) >= len(members):
        return None
    return folded


def _subgraph(dag: nx.DiGraph, members) -> nx.DiGraph:
    """``dag.subgraph(members).copy()`` built in bulk (data dicts shared)."""
    keep = set(members)
    succ = {n: {v: d for v, d in dag._succ[n].items() if v in keep} for n in keep}
    pred: dict[int, dict] = {n: {} for n in keep}
    for u, targets in succ.items():
        for v, d in targets.items():
            pred[v][u] = d
    sub = nx.DiGraph()
    sub._node.update((n, dag._node[n]) for n in sorted(keep))
    sub._succ.update(succ)
    sub._pred.update(pred)
    return sub


def viewer_data(
    graph: GradGraph,
    drawn: GradGraph,
    look: Theme,
    flow: str = "forward",
    budget: int = EXPAND_BUDGET,
    saved: bool = True,
) -> dict:
    """What the viewer script reads: nodes, folds, edges, colours.

    ``nodes`` is flat, ``len(NODE_FIELDS)`` numbers per node (strings as
    indices into ``strings``, -1 for none); ``boxes`` one list per box
    (``BOX_FIELDS``); ``edges`` flat pairs drawn ``a -> b`` (input -> consumer
    for ``flow="forward"``); ``extra`` the rare facts (source lines, saved
    tensors, left out when ``saved`` is false) by node index; ``ids`` the
    node ids when they are not ``0..N-1``.
    """
    text = _Strings()
    parent, boxes = fold_tree(graph, drawn, budget)
    order = sorted(graph.dag)
    index = {n: i for i, n in enumerate(order)}
    nodes: list[int] = []
    extra: dict[int, dict] = {}
    labels: dict[tuple, list[int]] = {}  # most nodes share their label
    for i, node in enumerate(order):
        data = graph.dag._node[node]
        key = tuple(data.get(k) for k in _LABEL_KEYS)
        label = labels.get(key)
        if label is None:
            label = labels[key] = _label(data, text)
        seq = data.get("seq_nr")
        nodes += [
            label[0],
            label[1],
            label[2],
            parent[i],
            label[3],
            label[4],
            text(data.get("module")),
            label[5],
            -1 if seq is None else seq,
            -1 if data.get("order") is None else data["order"],
        ]
        more = _extra(data, text, saved)
        if more:
            extra[i] = more
    box_rows = []
    for data, up in boxes:
        title, lines = node_lines(data)
        ops = [v for op, n in data["ops"].items() for v in (text(op), n)]
        box_rows.append(
            [
                text(title),
                text("\n".join(t for t in lines if t)),
                text(style_kind(data)),
                up,
                len(data["members"]),
                text(data.get("module")),
                ops,
                -1 if data.get("order") is None else data["order"],
            ]
        )
    edges: list[int] = []
    forward = flow == "forward"
    for u, v in sorted(graph.dag.edges):
        a, b = index[u], index[v]
        edges += (b, a) if forward else (a, b)
    return {
        "version": 1,
        "strings": text.table(),
        "nodes": nodes,
        "boxes": box_rows,
        "edges": edges,
        "roots": [index[r] for r in graph.roots if r in index],
        "ids": None if order == list(range(len(order))) else order,
        "extra": extra,
        "flow": flow,
        "kinds": _kind_colours(look),
        "bands": _bands(graph, look),
    }


_LABEL_KEYS = (
    "kind",
    "op",
    "name",
    "input",
    "dtype",
    "shape",
    "shapes",
    "runs",
    "step",
    "grad_norm",
    "attrs",
)


def _label(data: dict, text: _Strings) -> list[int]:
    """Title, lines, kind, op, name and shape of a node, as string indices."""
    title, lines = node_lines(data)
    lines = [*lines, *data.get("attrs", ())]
    return [
        text(title),
        text("\n".join(t for t in lines if t)),
        text(style_kind(data)),
        text(data["op"]),
        text(data.get("name")),
        text(_shape(data.get("dtype"), data.get("shape"))),
    ]


def _extra(data: dict, text: _Strings, saved: bool = True) -> dict:
    """The rare facts of a node; saved tensors as ``[attr, shape, bytes, of]``
    (strings interned; shape -1: freed by ``backward()``)."""
    out: dict = {}
    if data.get("shapes"):
        out["shapes"] = [_shape(data.get("dtype"), s) for s in data["shapes"]]
    for key in ("source", "traceback"):
        if data.get(key):
            out[key] = data[key]
    facts = [
        [text(f["attr"]), -1, 0, -1]
        if f["freed"]
        else [
            text(f["attr"]),
            text(_shape(f["dtype"], tuple(f["shape"]))),
            f["nbytes"],
            text(f.get("of")),
        ]
        for f in ((data.get("saved") or ()) if saved else ())
    ]
    if facts:
        out["saved"] = facts
    return out


def _bands(graph: GradGraph, look: Theme) -> dict[int, dict] | None:
    """One band per derivative order, as in the DOT picture (None: one order)."""
    orders = {o for _, o in graph.dag.nodes(data="order") if o is not None}
    if not orders - {0}:
        return None
    return {o: order_band(o, look) for o in sorted(orders)}


def _kind_colours(look: Theme) -> dict[str, dict]:
    return {
        kind: {
            "fill": attrs["fillcolor"],
            "line": attrs["color"],
            "text": attrs.get("fontcolor", look.text),
            "style": attrs.get("style", ""),
        }
        for kind, attrs in look.kinds.items()
    }


@lru_cache(maxsize=4096)
def _shape(dtype: str | None, shape: tuple | None) -> str | None:
    return None if shape is None else shape_text(dtype, shape)


def _css_vars(look: Theme, height: str) -> str:
    values = {
        "bg": look.background,
        "text": look.text,
        "muted": look.muted,
        "border": look.kinds[OP]["color"],
        "panel": look.panel,
        "highlight": look.highlight,
        "edge": look.edge,
        "module": look.module_border,
        "height": height,
    }
    return ";".join(f"--gg-{k}:{v}" for k, v in values.items())


def static_svg(drawn: GradGraph, look: Theme, **dot_options) -> str:
    """graphviz's SVG of the folded graph, without ids (shown without JS)."""
    dot = dot_source(dot_lines(drawn, look, **dot_options))
    svg = pipe(dot, "svg").decode("utf-8")
    return _SVG_IDS.sub("", svg[svg.index("<svg") :])


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
    expand_budget: int = EXPAND_BUDGET,
) -> str:
    """The viewer as one ``<div>`` (styles, data and script inside it).

    ``max_nodes`` (default ``VIEW_MAX_NODES``) bounds the boxes shown when the
    page opens; every node is still in the page, one click away.
    """
    look = get_theme(theme)
    drawn = drawn_graph(graph, collapse, max_nodes or VIEW_MAX_NODES)
    svg = static_svg(
        drawn,
        look,
        edge_labels=edge_labels,
        show_saved=show_saved,
        clusters=True,
        flow=flow,
    )
    saved = show_saved or len(graph) <= SAVED_UP_TO
    data = viewer_data(graph, drawn, look, flow, expand_budget, saved)
    payload = script_json(data, compact=True)
    digest = hashlib.sha1(payload.encode("utf-8")).hexdigest()[:12]
    uid = f"gg-{digest}-{next(_DISPLAYS)}"
    caption = title if title is not None else _caption(graph, drawn)
    return (
        f'<div class="gg-root" id="{uid}" style="{_css_vars(look, height)}">'
        f"<style>{_asset('viewer.css')}</style>"
        f'<div class="gg-bar"><b class="gg-caption">{html.escape(caption)}</b></div>'
        f'<div class="gg-static" style="overflow:auto;max-height:{height}">'
        f"{svg}</div>"
        f'<script type="application/json" class="gg-data">{payload}</script>'
        f"<script>{_asset('dagre.min.js').rstrip()}\n"
        f"{_asset('viewer.js').rstrip()}"
        f"(document.currentScript && document.currentScript.parentNode"
        f' || document.getElementById("{uid}"));</script></div>'
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
    ``show_saved``, ``edge_labels``, ``flow``, ``title``, ``expand_budget``).
    """
    fresh = path is not None and not os.path.exists(path)
    if path is not None:
        write_file(path, b"")  # a bad path fails before any layout
    options.setdefault("height", "100vh")
    look = get_theme(options.get("theme", "light"))
    try:
        fragment = html_fragment(graph, **options)
    except BaseException:
        if fresh:  # leave no empty page behind
            os.remove(path)
        raise
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
    """What Jupyter shows: the viewer, opening folded to ``NOTEBOOK_MAX_NODES``."""
    return html_fragment(graph, max_nodes=NOTEBOOK_MAX_NODES, height="560px")
