"""GradGraph -> graphviz: DOT text, SVG and other formats.

Node names are ``n<id>`` and nodes/edges are emitted in id order, so the DOT
text (and the SVG that ``dot`` makes of it) is the same on every run.

Example:
    >>> import torch
    >>> from gradgraph import trace
    >>> x = torch.ones(2, requires_grad=True)
    >>> print(to_digraph(trace(x.sum())).source.splitlines()[0])
    digraph gradgraph {
"""

from __future__ import annotations

import os

import graphviz

from ..graph import GradGraph
from .style import BASE_NODE, EDGE, GRAPH, edge_style, node_style
from .text import shape_text

INSTALL_HINT = (
    "the graphviz 'dot' program is not installed or not on PATH; install it with "
    "'apt-get install graphviz' (Debian/Ubuntu), 'brew install graphviz' (macOS) or "
    "'conda install graphviz'. to_dot(), to_text() and to_json() work without it."
)


class DotNotFoundError(RuntimeError):
    """Raised when rendering needs the graphviz ``dot`` binary and it is missing."""


def node_label(data: dict) -> str:
    """The text inside a node box: name (if any), op, output shape."""
    lines = []
    if data["name"]:
        lines.append(data["name"])
    if data["kind"] != "accumulate" or not data["name"]:
        lines.append(data["op"])
    lines.append(shape_text(data["dtype"], data["shape"]))
    return "\n".join(lines)


def to_digraph(graph: GradGraph, edge_labels: bool = False) -> graphviz.Digraph:
    """A ``graphviz.Digraph`` of the graph, gradients flowing from roots down."""
    dot = graphviz.Digraph(
        "gradgraph", graph_attr=GRAPH, node_attr=BASE_NODE, edge_attr=EDGE
    )
    dag = graph.dag
    for node in sorted(dag.nodes):
        data = dag.nodes[node]
        dot.node(f"n{node}", node_label(data), **node_style(data["kind"]))
    for u, v, data in sorted(dag.edges(data=True)):
        attrs = dict(edge_style(data.get("kind")))
        if edge_labels and "input_nr" in data:
            attrs["label"] = str(data["input_nr"])
        for _ in range(data.get("multiplicity", 1)):
            dot.edge(f"n{u}", f"n{v}", **attrs)
    return dot


def _pipe(graph: GradGraph, format: str, **options) -> bytes:
    try:
        return to_digraph(graph, **options).pipe(format=format)
    except graphviz.ExecutableNotFound as exc:
        raise DotNotFoundError(INSTALL_HINT) from exc
    except ValueError as exc:
        raise ValueError(f"{exc}; try format='svg', 'png' or 'pdf'.") from exc


def to_svg(graph: GradGraph, **options) -> str:
    """SVG text of the graph."""
    return _pipe(graph, "svg", **options).decode("utf-8")


def render(
    graph: GradGraph, path: str | os.PathLike, format: str = "svg", **options
) -> str:
    """Write the picture to ``path`` exactly (no extension added); returns it."""
    data = _pipe(graph, format, **options)
    path = os.fspath(path)
    try:
        with open(path, "wb") as handle:
            handle.write(data)
    except OSError as exc:
        raise ValueError(
            f"cannot write {path!r}: {exc.strerror}; pick a writable path."
        ) from exc
    return path
