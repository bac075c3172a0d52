"""``make_dot``: torchviz's function, same signature, gradgraph's pictures.

Switching is one import line (``from gradgraph import make_dot``). It returns
a ``graphviz.Digraph`` (so ``.render()``, ``.pipe()``, ``.source`` and Jupyter
display work as before), and unlike torchviz 0.0.3 it has no recursion limit,
gives the same bytes on every run (node names are ``n<id>`` in walk order,
not ``id()`` addresses), works after ``backward()`` freed the saved tensors
(they show as freed), and takes ``names=`` for outputs and variables.

Example:
    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh())
    >>> y = model(torch.randn(1, 8))
    >>> dot = make_dot(y.mean(), params=dict(model.named_parameters()))
    >>> type(dot).__mro__[1].__name__, "0.weight" in dot.source
    ('Digraph', True)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import graphviz
import networkx as nx
import torch

from ..graph import GradGraph, trace
from ..nodes import ROOT, dtype_name
from .dot import INSTALL_HINT, DotNotFoundError, dot_lines

SAVED = "_saved_"


class GradDigraph(graphviz.Digraph):
    """A ``graphviz.Digraph`` whose missing-``dot`` error says how to install it."""

    def pipe(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().pipe(*args, **kwargs)
        except graphviz.ExecutableNotFound as exc:
            raise DotNotFoundError(INSTALL_HINT) from exc

    def render(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().render(*args, **kwargs)
        except graphviz.ExecutableNotFound as exc:
            raise DotNotFoundError(INSTALL_HINT) from exc


def attribute_lines(fn: Any, max_attr_chars: int = 50) -> list[str]:
    """``name: value`` for each non-tensor attribute a backward node saved."""
    width = max(max_attr_chars, 3)
    lines = []
    for attr in sorted(dir(fn)):
        if not attr.startswith(SAVED) or hasattr(fn, "_raw" + attr):
            continue
        try:
            value = getattr(fn, attr)
        except RuntimeError:  # released by backward()
            value = "[freed]"
        if isinstance(value, torch.Tensor) or (
            isinstance(value, tuple) and any(isinstance(v, torch.Tensor) for v in value)
        ):
            continue  # saved tensors are shown by show_saved
        text = str(value)
        if len(text) > width:
            text = text[: width - 3] + "..."
        lines.append(f"{attr[len(SAVED) :]}: {text}")
    return lines


def _has_graph(value: Any) -> bool:
    """Whether ``value`` is a tensor with an autograd graph (else: one box)."""
    return not isinstance(value, torch.Tensor) or (
        value.grad_fn is not None or value.requires_grad
    )


def _add_untracked(graph: GradGraph, tensors: list[torch.Tensor]) -> None:
    """One ``Tensor`` box per tensor without a graph, as torchviz draws it."""
    for tensor in tensors:
        node = len(graph.dag)
        graph.dag.add_node(
            node,
            op="Tensor",
            kind=ROOT,
            label="Tensor",
            name=None,
            shape=tuple(tensor.shape),
            dtype=dtype_name(tensor.dtype),
            seq_nr=None,
            saved=(),
            order=None,
        )
        graph.roots.append(node)
        graph.outputs.append({"node": node, "name": None, "shape": tuple(tensor.shape)})


def make_dot_from_trace(trace: Any) -> None:
    """torchviz's ``make_dot_from_trace``, which torchviz no longer supports.

    Raises ``NotImplementedError`` exactly as torchviz does (the JIT trace
    viewer moved to TensorBoard); draw the autograd graph with :func:`make_dot`.
    """
    raise NotImplementedError(
        "This function has been moved to pytorch core and can be found here: "
        "https://pytorch.org/docs/stable/tensorboard.html (gradgraph, like "
        "torchviz, draws autograd graphs with make_dot instead)."
    )


def make_dot(
    var: torch.Tensor | tuple,
    params: Mapping | None = None,
    show_attrs: bool = False,
    show_saved: bool = False,
    max_attr_chars: int = 50,
    names: Mapping | None = None,
    theme: str = "light",
) -> graphviz.Digraph:
    """torchviz's ``make_dot``: the autograd graph behind ``var`` as a Digraph.

    Args:
        var: an output tensor or a tuple of them; a tensor with no autograd
            graph (``torch.randn(3)``) is drawn as one ``Tensor`` box.
        params: ``{name: tensor}`` naming leaves, e.g.
            ``dict(model.named_parameters())``.
        show_attrs: list each node's non-tensor saved attributes (``dim``,
            ``alpha``, ...) under its name.
        show_saved: draw the tensors each node saved for backward.
        max_attr_chars: longest attribute value shown with ``show_attrs``.
        names: ``{tensor: "label"}`` (or ``{"label": tensor}``) for outputs and
            intermediate values.
        theme: ``"light"`` or ``"dark"``.
    """
    outputs = tuple(var) if isinstance(var, (tuple, list)) else (var,)
    tracked = tuple(t for t in outputs if _has_graph(t))
    if tracked:
        graph = trace(*tracked, params=params, names=names, keep=show_attrs)
    else:
        graph = GradGraph(nx.DiGraph(), [], [])
    _add_untracked(graph, [t for t in outputs if not _has_graph(t)])
    if show_attrs:
        for node, data in graph.dag.nodes(data=True):
            lines = attribute_lines(graph.grad_fn(node), max_attr_chars)
            if lines:
                data["attrs"] = tuple(lines)
    body = dot_lines(graph, theme, show_saved=show_saved)
    return GradDigraph("gradgraph", body=body)
