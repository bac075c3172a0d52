"""Pictures that point at something: nodes marked, a path traced, nodes shaded.

The introspection reports (first non-finite gradient, saved memory, gradient
flow) draw the ordinary picture of :mod:`gradgraph.render.dot` with three
additions, all in the theme's ``highlight`` colour: ``mark`` fills nodes,
``trail`` draws a chain of nodes and the edges between them bold, ``shade``
fills each node with the highlight colour at an opacity proportional to a
number (saved bytes, gradient norm). ``lines`` adds text lines to nodes. On a
folded graph a box gets the sum of its members' shades and is marked when
any member is; lines keyed by a member are dropped unless it names the box.

Example:
    >>> import torch
    >>> from gradgraph import trace
    >>> x = torch.ones(2, requires_grad=True)
    >>> g = trace(x.exp().sum())
    >>> text = emphasized_dot(g, mark={1}, trail=[0, 1], lines={1: ["here"]})
    >>> "here" in text and 'penwidth="3"' in text
    True
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence

from ..graph import GradGraph
from .collapse import member_box
from .dot import dot_lines, dot_source, drawn_graph, pipe, write_file
from .style import theme as theme_of

__all__ = ["emphasized_dot", "render_emphasized"]

_EDGE = re.compile(r"^\tn(\d+) -> n(\d+)")


def _opacity(fraction: float) -> str:
    """Two hex digits of alpha: 0 -> faint (0x18), 1 -> opaque."""
    return f"{int(0x18 + (0xFF - 0x18) * min(max(fraction, 0.0), 1.0)):02x}"


def emphasized_dot(
    graph: GradGraph,
    *,
    mark: set[int] | frozenset[int] = frozenset(),
    trail: Sequence[int] = (),
    shade: Mapping[int, float] | None = None,
    shade_text: Callable[[float], str] | None = None,
    lines: Mapping[int, Sequence[str]] | None = None,
    title: str | None = None,
    theme: str = "light",
    collapse: str | bool | None = None,
    max_nodes: int | None = None,
    flow: str = "forward",
) -> str:
    """DOT text of ``graph`` with nodes marked, a path bold and nodes shaded.

    Args:
        graph: the traced graph; node ids below are its ids.
        mark: nodes filled with the highlight colour.
        trail: nodes (in order) whose borders and connecting edges are bold.
        shade: node -> a number >= 0; fill opacity grows with it (largest
            = opaque). Folded boxes sum their members.
        shade_text: turns a node's (or box's) shade value into a line of text
            in its box, e.g. ``lambda b: f"{b / 1024:.1f} KiB"``.
        lines: node -> extra text lines in its box (kept on unfolded nodes).
        title, theme, collapse, max_nodes, flow: as for :func:`gradgraph.trace`'s
            ``render`` (see :func:`gradgraph.render.dot.to_dot`).
    """
    look = theme_of(theme)
    drawn = drawn_graph(graph, collapse, max_nodes)
    box = member_box(drawn) if drawn is not graph else {n: n for n in graph.dag}
    extra: dict[int, dict] = {}
    if shade:
        totals: dict[int, float] = {}
        for node, value in shade.items():
            if node in box:
                totals[box[node]] = totals.get(box[node], 0.0) + float(value)
        top = max(totals.values(), default=0.0)
        for node, value in totals.items():
            if top > 0 and value > 0:
                fill = look.highlight + _opacity(value / top)
                extra[node] = {"fillcolor": fill}
    on_path = [box[n] for n in trail if n in box]
    for node in on_path:
        extra.setdefault(node, {}).update({"color": look.highlight, "penwidth": "2.5"})
    for node in mark:
        if node in box:
            extra.setdefault(box[node], {}).update(
                {
                    "fillcolor": look.highlight,
                    "color": look.text,
                    "penwidth": "3",
                }
            )
    if shade and shade_text:
        lines = {**(lines or {})}
        for node, value in totals.items():
            if value > 0:
                lines[node] = [*lines.get(node, ()), shade_text(value)]
    if lines:
        drawn = _with_lines(drawn, lines)
    body = dot_lines(drawn, look, flow=flow, title=title, extra=extra)
    pairs = set(zip(on_path, on_path[1:], strict=False))
    pairs |= {(v, u) for u, v in pairs}
    bold = f'color="{look.highlight}" penwidth="2.5"'
    for i, line in enumerate(body):
        match = _EDGE.match(line)
        if match and (int(match[1]), int(match[2])) in pairs:
            text = line.rstrip("\n")
            text = text[:-1] + f" {bold}]" if text.endswith("]") else f"{text} [{bold}]"
            body[i] = text + "\n"
    return dot_source(body)


def _with_lines(graph: GradGraph, lines: Mapping[int, Sequence[str]]) -> GradGraph:
    """A copy of ``graph`` whose nodes in ``lines`` show those lines too."""
    dag = graph.dag.copy()
    for node, more in lines.items():
        if node in dag:
            data = dag.nodes[node]  # copy() gave each node its own dict
            data["attrs"] = (*data.get("attrs", ()), *more)
    return GradGraph(dag, list(graph.roots), list(graph.outputs))


def render_emphasized(
    graph: GradGraph, path: str | os.PathLike, format: str = "svg", **options
) -> str:
    """Write :func:`emphasized_dot`'s picture to ``path``; returns the path."""
    return write_file(path, pipe(emphasized_dot(graph, **options), format))
