"""The one style table: how each kind of node looks. Renderers read it; nothing
else hard-codes a colour.

Example:
    >>> node_style("accumulate")["fillcolor"]
    'lightblue'
"""

from __future__ import annotations

FONT = "Helvetica"

GRAPH = {"rankdir": "TB", "fontname": FONT, "fontsize": "11", "bgcolor": "white"}
EDGE = {"color": "#555555", "arrowsize": "0.7"}

NODE_STYLES: dict[str, dict[str, str]] = {
    "accumulate": {"shape": "box", "style": "filled", "fillcolor": "lightblue"},
    "op": {"shape": "box", "style": "filled", "fillcolor": "lightgrey"},
    "root": {"shape": "box", "style": "filled", "fillcolor": "darkolivegreen1"},
}
BASE_NODE = {"fontname": FONT, "fontsize": "10", "height": "0.2"}

# edges by ``kind``; a plain next-function edge has no kind
EDGE_STYLES: dict[str | None, dict[str, str]] = {
    None: {},
    "created-by": {"style": "dashed", "color": "#999999", "constraint": "false"},
}


def node_style(kind: str) -> dict[str, str]:
    """Graphviz attributes for a node of ``kind`` (accumulate, op or root)."""
    try:
        return NODE_STYLES[kind]
    except KeyError:
        raise ValueError(
            f"no style for node kind {kind!r}; known kinds: {sorted(NODE_STYLES)}"
        ) from None


def edge_style(kind: str | None) -> dict[str, str]:
    """Graphviz attributes for an edge of ``kind`` (None: a next-function edge)."""
    try:
        return EDGE_STYLES[kind]
    except KeyError:
        raise ValueError(
            f"no style for edge kind {kind!r}; known kinds: "
            f"{sorted(k for k in EDGE_STYLES if k)}"
        ) from None
