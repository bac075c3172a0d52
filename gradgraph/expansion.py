"""expand(): watch ``create_graph=True`` grow the autograd graph, order by order.

``autograd.grad(loss, params, create_graph=True)`` does not only compute the
gradient: it builds a graph for it (MseLossBackwardBackward0,
TanhBackwardBackward0, MmBackward0, ...) on top of the loss graph, and an HVP
builds a third layer on top of that. :func:`expand` runs those passes and
returns one :class:`~gradgraph.graph.GradGraph` of everything, in which each
node's ``order`` says which pass added it: 0 the forward (loss) graph, 1 the
gradient, 2 the HVP, k the k-th pass.

Orders come from reachability, which is the same as set difference of node
identities: a node has order k when the outputs of pass k reach it and those
of passes 0..k-1 do not (``next_functions`` never change after a node is
made, so "new after pass k" and "first reached from pass k" agree).

With ``created_by=True`` the passes run under torch's anomaly mode, which
records in each node made by a backward the node whose backward made it
(``metadata["parent_"]``). That gives each such node a ``created_by`` attribute
and an edge of kind ``"created-by"`` to its creator, a node of lower order (not
always order k-1: the HVP's backward also runs through forward nodes).

Example:
    >>> import torch
    >>> x = torch.tensor(1.0, requires_grad=True)
    >>> g = expand(x**4, {"x": x}, order=3)
    >>> sorted(order_summary(g))
    [0, 1, 2, 3]
    >>> g.dag.nodes[g.roots[0]]["op"], g.dag.nodes[g.roots[0]]["order"]
    ('PowBackward0', 0)
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch

from .blockers import check_second_order
from .derivatives.params import (
    ParamSet,
    as_params,
    as_vector,
    check_scalar_loss,
    grad_checked,
)
from .graph import GradGraph, _flatten_outputs, trace

__all__ = ["CREATED_BY", "expand", "order_summary", "trace_orders"]

CREATED_BY = "created-by"
"""Edge ``kind`` linking a node to the node whose backward created it."""

# torch warns with the forward stack when a backward fails under anomaly mode;
# gradgraph re-raises such errors with its own message, so these are noise.
_ANOMALY_WARNINGS = r"(Error detected in|No forward pass information)"


@contextmanager
def anomaly_mode(enabled: bool) -> Iterator[None]:
    """Anomaly mode on (without the NaN check) when ``enabled``; restored after.

    The previous mode (and its NaN check) is restored even when the block
    raises.
    """
    if not enabled:
        yield
        return
    with (
        warnings.catch_warnings(),
        torch.autograd.set_detect_anomaly(True, check_nan=False),
    ):
        warnings.filterwarnings("ignore", _ANOMALY_WARNINGS, UserWarning)
        yield


def trace_orders(
    *stages: Any,
    model: torch.nn.Module | None = None,
    params: Mapping | Any = None,
    names: Mapping | None = None,
    keep: bool = False,
) -> GradGraph:
    """One GradGraph of several stages' outputs, each node tagged with its stage.

    Stage k is a tensor or a tuple/list/dict of tensors (e.g. the loss, then
    the gradients from ``autograd.grad(..., create_graph=True)``, then an HVP
    made with ``create_graph=True``). A node gets ``order`` k when stage k's
    outputs reach it and no earlier stage's do. Nodes whose
    ``metadata["parent_"]`` (set by anomaly mode) is in the graph get
    ``created_by`` (the creator's id) and an edge of kind ``"created-by"`` to
    it; when the creator is also a next function, that edge gets
    ``created_by=True`` instead. Tensors without a graph are left out.

    Args:
        *stages: the outputs of each pass, in the order they were computed.
        model, params, names: names for the nodes, as in :func:`trace`.
        keep: keep the grad_fn objects (``GradGraph.grad_fn``).

    Example:
        >>> import torch
        >>> x = torch.tensor(2.0, requires_grad=True)
        >>> y = x**3
        >>> (dy,) = torch.autograd.grad(y, x, create_graph=True)
        >>> g = trace_orders({"y": y}, {"dy": dy})
        >>> [g.dag.nodes[r]["order"] for r in g.roots]
        [0, 1]
    """
    if not stages:
        raise ValueError("trace_orders() needs at least one stage, e.g. the loss.")
    outputs: dict[str, torch.Tensor] = {}
    stage_of: list[int] = []
    for k, stage in enumerate(stages):
        for name, tensor in _flatten_outputs((stage,)):
            if not tensor.requires_grad:
                continue
            key = name if name is not None else f"stage{k}[{len(outputs)}]"
            if key in outputs:
                key = f"{key}#{k}"
            outputs[key] = tensor
            stage_of.append(k)
    if not outputs:
        raise ValueError(
            "no stage has a tensor with an autograd graph; pass the loss and the "
            "results of autograd.grad(..., create_graph=True)."
        )
    graph = trace(outputs, model=model, params=params, names=names, keep=True)
    fns = graph._fns
    roots: list[list[int]] = [[] for _ in stages]
    for info, k in zip(graph.outputs, stage_of, strict=True):
        roots[k].append(info["node"])
    _assign_orders(graph, roots)
    _link_creators(graph, fns)
    if not keep:
        graph._fns = None
    return graph


def _assign_orders(graph: GradGraph, roots: list[list[int]]) -> None:
    """``order`` = the first stage whose roots reach the node (next edges only)."""
    nodes, succ = graph.dag._node, graph.dag._succ
    for k, stage_roots in enumerate(roots):
        stack = [r for r in stage_roots if nodes[r]["order"] is None]
        for r in stack:
            nodes[r]["order"] = k
        while stack:
            for v in succ[stack.pop()]:
                if nodes[v]["order"] is None:
                    nodes[v]["order"] = k
                    stack.append(v)


def _link_creators(graph: GradGraph, fns: list) -> None:
    """``created_by`` attributes and edges from anomaly-mode ``parent_`` metadata."""
    dag = graph.dag
    index = {fn: i for i, fn in enumerate(fns)}
    for node, fn in enumerate(fns):
        data = dag.nodes[node]
        data["created_by"] = None
        if not data["order"]:
            continue
        metadata = getattr(fn, "metadata", None)
        parent = metadata.get("parent_") if metadata else None
        creator = index.get(parent) if parent is not None else None
        if creator is None:
            continue
        data["created_by"] = creator
        if dag.has_edge(node, creator):
            dag.edges[node, creator]["created_by"] = True
        else:
            dag.add_edge(node, creator, kind=CREATED_BY)


def _check_params_in_graph(loss: torch.Tensor, ps: ParamSet) -> None:
    in_graph = set(trace(loss, keep=True)._fns)
    missing = [
        name
        for name, p in zip(ps.names, ps.tensors, strict=True)
        if torch.autograd.graph.get_gradient_edge(p).node not in in_graph
    ]
    if missing:
        raise ValueError(
            f"params {missing} are not in the loss's autograd graph, so the loss "
            "does not depend on them; pass only the parameters the loss was "
            "computed from (and compute the loss after making them require grad)."
        )


def _pass_names(k: int) -> str:
    return {1: "grad", 2: "hvp"}.get(k, f"d{k}")


def expand(
    loss: torch.Tensor,
    params: Any,
    order: int = 2,
    vector: Any = None,
    *,
    created_by: bool = True,
    model: torch.nn.Module | None = None,
    names: Mapping | None = None,
    keep: bool = False,
) -> GradGraph:
    """Compute derivatives with ``create_graph=True`` and trace every layer.

    Pass 1 is ``autograd.grad(loss, params, create_graph=True)``; pass k >= 2
    differentiates ``sum(d_{k-1} * v)`` (for k = 2 that is the HVP ``H v``).
    Every pass keeps its graph, and the returned graph holds the loss graph
    (order 0), the gradient's (order 1), the HVP's (order 2) and so on. Its
    outputs are named ``loss``, ``grad[p]``, ``grad.v``, ``hvp[p]``, ``hvp.v``,
    ``d3[p]``, ...; :func:`order_summary` counts what each order adds.

    Args:
        loss: scalar tensor with a graph.
        params: Module, dict name -> tensor, list of tensors or one tensor.
        order: how many derivative passes (1 = gradient only, 2 = up to the HVP).
        vector: ``v`` in the form of ``params`` (or one flat vector); ones when
            None.
        created_by: run the passes under anomaly mode to link each new node to
            the node whose backward created it. Anomaly mode stores a Python
            stack in every node it creates, so the passes run slower; the mode
            is restored afterwards, even on error.
        model, names: more names for the nodes, as in :func:`trace`.
        keep: keep the grad_fn objects (``GradGraph.grad_fn``); this keeps all
            the derivative graphs' memory alive while the GradGraph lives.

    Raises:
        ValueError: non-scalar loss, ``order < 1``, params the loss does not
            depend on, a vector of the wrong shape, or a pass whose result no
            longer depends on the params (ask for a lower order).

    Example:
        >>> import torch
        >>> lin = torch.nn.Linear(2, 1)
        >>> loss = lin(torch.ones(3, 2)).tanh().pow(2).mean()
        >>> g = expand(loss, lin)
        >>> g.outputs[1]["name"], g.dag.nodes[g.outputs[1]["node"]]["order"]
        ('grad[weight]', 1)
    """
    check_scalar_loss(loss)
    if isinstance(order, bool) or not isinstance(order, int) or order < 1:
        raise ValueError(
            f"order must be an int >= 1 (1 = gradient, 2 = HVP), got {order!r}."
        )
    ps = as_params(params)
    if loss.grad_fn is not None:
        _check_params_in_graph(loss, ps)
    v = as_vector(vector, ps) if vector is not None else None
    if order >= 2:
        check_second_order(loss, params=ps.tensors, what=f"expand(order={order})")
    if v is None and order >= 2:
        v = [torch.ones_like(p) for p in ps.tensors]
    stages: list[dict[str, torch.Tensor]] = [{"loss": loss}]
    with anomaly_mode(created_by):
        current = grad_checked(loss, ps, create_graph=True)
        stages.append(_named(ps, current, _pass_names(1)))
        for k in range(2, order + 1):
            contraction = sum(
                (g * u).sum()
                for g, u in zip(current, v, strict=True)
                if g.requires_grad
            )
            if not isinstance(contraction, torch.Tensor):
                raise ValueError(
                    f"derivative pass {k - 1} does not depend on the params any "
                    f"more (the loss is a polynomial of degree < {k}); ask for "
                    f"order={k - 1}."
                )
            current = grad_checked(
                contraction, ps, create_graph=True, allow_unused=True
            )
            stage = {f"{_pass_names(k - 1)}.v": contraction}
            stage.update(_named(ps, current, _pass_names(k)))
            stages.append(stage)
    return trace_orders(
        *stages,
        model=model,
        params=dict(zip(ps.names, ps.tensors, strict=True)),
        names=names,
        keep=keep,
    )


def _named(ps: ParamSet, values: list[torch.Tensor], prefix: str) -> dict:
    return {f"{prefix}[{n}]": t for n, t in zip(ps.names, values, strict=True)}


def order_summary(graph: GradGraph) -> dict[int, dict]:
    """What each derivative order adds: nodes, saved tensors and bytes, ops.

    ``saved_bytes`` sums the saved tensors the order's nodes still hold (a
    tensor saved by two nodes counts twice); ``created_by`` counts the nodes
    linked to their creator. Nodes with no order (a plain trace) are left out.

    Example:
        >>> import torch
        >>> x = torch.tensor(1.0, requires_grad=True)
        >>> order_summary(expand(x**3, x, order=1))[1]["nodes"] > 0
        True
    """
    rows: dict[int, dict] = {}
    for _, data in graph.dag.nodes(data=True):
        k = data["order"]
        if k is None:
            continue
        row = rows.get(k)
        if row is None:
            row = rows[k] = {
                "nodes": 0,
                "saved_tensors": 0,
                "saved_bytes": 0,
                "created_by": 0,
                "by_op": Counter(),
            }
        row["nodes"] += 1
        row["by_op"][data["op"]] += 1
        if data.get("created_by") is not None:
            row["created_by"] += 1
        for fact in data["saved"]:
            row["saved_tensors"] += 1
            if not fact["freed"]:
                row["saved_bytes"] += fact["nbytes"]
    for row in rows.values():
        row["by_op"] = dict(sorted(row["by_op"].items()))
    return dict(sorted(rows.items()))
