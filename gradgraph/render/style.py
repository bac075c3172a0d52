"""The one style table: how each kind of node, each derivative order and each
theme looks. Renderers (DOT, SVG, HTML) read it; nothing else hard-codes a colour.

Node kinds (see :func:`style_kind`):

=============  =============================================================
``accumulate`` AccumulateGrad of a parameter (named by ``model=``/``params=``)
``leaf-input`` AccumulateGrad of any other leaf (an input, an unnamed tensor)
``op``         an ordinary backward node (``AddmmBackward0`` ...)
``root``       a traced output
``saved``      a tensor a node saved for backward (``show_saved=True``)
``freed``      a saved tensor that ``backward()`` already released
``chain``      a folded linear chain of nodes (``collapse=``)
``module``     the nodes one module's forward created, folded (``collapse=``)
``more``       the rest of a graph cut at ``max_nodes``
=============  =============================================================

Derivative orders (node attribute ``order``) get one band each: 0 is the
forward graph, 1 the gradient graph built with ``create_graph=True``, 2 the
Hessian-vector-product graph, and so on.

Example:
    >>> theme("light").kinds["accumulate"]["fillcolor"]
    '#cfe5ff'
    >>> order_band(1, "dark")["label"]
    'order 1 · gradient graph'
"""

from __future__ import annotations

from dataclasses import dataclass

from ..nodes import ACCUMULATE, CHAIN, MODULE, MORE, OP, ROOT

FONT = "Helvetica,Arial,sans-serif"
MONO = "Menlo,Consolas,monospace"
# kinds that are only looks: a leaf that is no named parameter, saved tensors
LEAF_INPUT = "leaf-input"
SAVED = "saved"
FREED = "freed"
KINDS = (ACCUMULATE, LEAF_INPUT, OP, ROOT, SAVED, FREED, CHAIN, MODULE, MORE)
"""Every kind the style table styles: the node kinds of :mod:`gradgraph.nodes`
and the kinds only a picture has."""
ORDER_NAMES = ("forward graph", "gradient graph", "HVP graph")


@dataclass(frozen=True)
class Theme:
    """Colours of one theme; ``kinds`` maps a node kind to graphviz attributes."""

    name: str
    background: str
    text: str
    muted: str
    edge: str
    saved_edge: str
    kinds: dict[str, dict[str, str]]
    bands: tuple[tuple[str, str], ...]  # (fill, border) per derivative order
    module_border: str
    panel: str
    highlight: str


def _kinds(fill: dict[str, str], line: dict[str, str], text: str) -> dict:
    shapes = {
        SAVED: ("note", "filled"),
        FREED: ("note", "filled,dashed"),
        CHAIN: ("box", "filled,rounded,bold"),
        MODULE: ("box3d", "filled"),
        MORE: ("box", "filled,dashed"),
    }
    table = {}
    for kind in KINDS:
        # tensors (leaves, outputs) are rounded; backward ops are plain boxes
        shape, style = shapes.get(kind, ("box", "filled,rounded"))
        if kind == OP:
            style = "filled"
        table[kind] = {
            "shape": shape,
            "style": style,
            "fillcolor": fill[kind],
            "color": line[kind],
            "fontcolor": text,
        }
    return table


LIGHT = Theme(
    name="light",
    background="#ffffff",
    text="#1f2328",
    muted="#59636e",
    edge="#6e7781",
    saved_edge="#d4a72c",
    kinds=_kinds(
        fill={
            "accumulate": "#cfe5ff",
            "leaf-input": "#d8f3ee",
            "op": "#f3f4f6",
            "root": "#c9f0c5",
            "saved": "#ffe7c2",
            "freed": "#eeeeee",
            "chain": "#ece3ff",
            "module": "#fff3bf",
            "more": "#ffffff",
        },
        line={
            "accumulate": "#3b82f6",
            "leaf-input": "#14b8a6",
            "op": "#9ca3af",
            "root": "#22a03c",
            "saved": "#e69500",
            "freed": "#9ca3af",
            "chain": "#8b5cf6",
            "module": "#c69026",
            "more": "#9ca3af",
        },
        text="#1f2328",
    ),
    bands=(("#f5f8fc", "#b6c6db"), ("#fff8eb", "#e3bf7a"), ("#fcf1f7", "#d99ac0")),
    module_border="#c69026",
    panel="#f6f8fa",
    highlight="#ff6b00",
)

DARK = Theme(
    name="dark",
    background="#0d1117",
    text="#e6edf3",
    muted="#9aa5b1",
    edge="#8b949e",
    saved_edge="#d29922",
    kinds=_kinds(
        fill={
            "accumulate": "#0c3a6b",
            "leaf-input": "#0f4a44",
            "op": "#21262d",
            "root": "#1a4d24",
            "saved": "#5a3a06",
            "freed": "#30363d",
            "chain": "#3b2a6b",
            "module": "#4d3b0a",
            "more": "#0d1117",
        },
        line={
            "accumulate": "#58a6ff",
            "leaf-input": "#39c5b5",
            "op": "#6e7681",
            "root": "#3fb950",
            "saved": "#d29922",
            "freed": "#6e7681",
            "chain": "#a371f7",
            "module": "#d29922",
            "more": "#6e7681",
        },
        text="#e6edf3",
    ),
    bands=(("#111a26", "#30476b"), ("#1f1a0e", "#7a5b1c"), ("#221322", "#7d3f6e")),
    module_border="#d29922",
    panel="#161b22",
    highlight="#ff9b3d",
)

THEMES = {"light": LIGHT, "dark": DARK}


def theme(name: str | Theme = "light") -> Theme:
    """The :class:`Theme` called ``name`` (``"light"`` or ``"dark"``)."""
    if isinstance(name, Theme):
        return name
    try:
        return THEMES[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown theme {name!r}; use one of {sorted(THEMES)}."
        ) from None


def node_style(kind: str, theme_name: str | Theme = "light") -> dict[str, str]:
    """Graphviz attributes for a node of ``kind`` (one of :data:`KINDS`)."""
    kinds = theme(theme_name).kinds
    try:
        return kinds[kind]
    except KeyError:
        raise ValueError(
            f"no style for node kind {kind!r}; known kinds: {list(KINDS)}"
        ) from None


def style_kind(data: dict) -> str:
    """The style kind of a node from its attributes.

    AccumulateGrad nodes are ``accumulate`` when they belong to a named parameter
    and ``leaf-input`` otherwise (unnamed leaves, and inputs named via
    ``names=``, which trace marks ``input=True``). Folded boxes keep their kind.
    """
    kind = data["kind"]
    if kind == ACCUMULATE and (not data.get("name") or data.get("input")):
        return LEAF_INPUT
    return kind


EDGE_KINDS = ("created-by",)


def edge_style(kind: str | None, theme_name: str | Theme = "light") -> dict[str, str]:
    """Graphviz attributes for an edge of ``kind``.

    ``None`` is a next-function edge (the theme's edge defaults);
    ``"created-by"`` links a higher-order node to the node whose backward
    created it (dashed, muted, not used for ranking).
    """
    if kind is None:
        return {}
    if kind not in EDGE_KINDS:
        raise ValueError(
            f"no style for edge kind {kind!r}; known kinds: {list(EDGE_KINDS)}"
        )
    look = theme(theme_name)
    faint = look.muted + "66"  # 40% opaque: many of them, context only
    return {
        "style": "dashed",
        "color": faint,
        "constraint": "false",
        "penwidth": "0.6",
        "arrowhead": "none",
    }


def order_band(order: int, theme_name: str | Theme = "light") -> dict[str, str]:
    """Fill, border and label of the band for derivative ``order`` (0, 1, 2...)."""
    bands = theme(theme_name).bands
    fill, border = bands[order % len(bands)] if order >= 0 else bands[0]
    what = ORDER_NAMES[order] if 0 <= order < len(ORDER_NAMES) else "derivative"
    return {"fillcolor": fill, "color": border, "label": f"order {order} · {what}"}
