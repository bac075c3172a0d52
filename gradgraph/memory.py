"""saved_memory(): the activation memory a graph holds for its backward.

Every tensor a node saves for backward stays in memory until the backward
frees it. What that costs is the bytes of the *storages* behind those tensors,
each counted once (a ReLU's output saved by the ReLU and by the next Linear is
one storage; a view keeps its whole base alive), leaving out the storages of
leaves that require grad (parameters; they live anyway). This is what
``torch.autograd.graph.saved_tensors_hooks`` sees during the forward, and what
activation checkpointing or offloading saves.

:func:`gradgraph.trace` notes each saved value's storage (an id and its bytes);
here each storage is charged once, to the earliest node of the forward that
saved it (smallest sequence number), so a split by node, op or module adds up to
the total. A storage that backward already freed counts 0.

Example:
    >>> import torch
    >>> from gradgraph import trace
    >>> w = torch.ones(4, 4, requires_grad=True)   # a parameter: not counted
    >>> x = torch.ones(8, 4)                       # saved by the first matmul
    >>> h = torch.relu(x @ w)                      # relu saves its output h,
    >>> loss = (h @ w).sum()                       # the matmul saves h again
    >>> saved_memory(trace(loss))                  # x and h, 128 bytes each
    256
    >>> saved_memory(trace(loss), by="op")         # h charged to relu, once
    {'MmBackward0': 128, 'ReluBackward0': 128}
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

from .graph import GradGraph
from .nodes import ACCUMULATE

__all__ = [
    "BY",
    "memory_chart",
    "memory_dot",
    "render_memory",
    "saved_bytes_by_node",
    "saved_memory",
]

BY = (None, "op", "module", "node")


def saved_bytes_by_node(graph: GradGraph) -> dict[int, int]:
    """Node -> bytes of the storages charged to it (every node with saved
    values; 0 where all its storages are charged elsewhere or are leaves')."""
    dag = graph.dag
    leaves = {
        data["storage"]
        for _, data in dag.nodes(data=True)
        if data["kind"] == ACCUMULATE and "storage" in data
    }
    savers = [
        (-1 if data.get("seq_nr") is None else data["seq_nr"], node)
        for node, data in dag.nodes(data=True)
        if data.get("storages")
    ]
    charged: set[int] = set()
    out: dict[int, int] = {}
    for _, node in sorted(savers):
        total = 0
        for sid, nbytes in dag.nodes[node]["storages"]:
            if sid not in leaves and sid not in charged:
                charged.add(sid)
                total += nbytes
        out[node] = total
    return out


def saved_memory(graph: GradGraph, by: str | None = None) -> int | dict:
    """Bytes the graph holds for backward: unique storages, parameters excluded.

    Args:
        graph: a traced graph (freed values count 0).
        by: None for the total (an int); ``"op"``, ``"module"`` (module of the
            node, None when it has none; needs ``trace(..., modules=rec)``) or
            ``"node"`` for a dict whose values add up to the total.

    Returns:
        An int, or a dict sorted by key (modules: None last).
    """
    if by not in BY:
        raise ValueError(f"by={by!r}; use None (total), 'op', 'module' or 'node'.")
    per_node = saved_bytes_by_node(graph)
    if by is None:
        return sum(per_node.values())
    if by == "node":
        return dict(sorted(per_node.items()))
    nodes = graph.dag.nodes
    split: Counter = Counter()
    for node, nbytes in per_node.items():
        split[nodes[node].get(by)] += nbytes
    return dict(sorted(split.items(), key=lambda kv: (kv[0] is None, kv[0] or "")))


def memory_chart(
    graph: GradGraph,
    path: str | os.PathLike,
    by: str = "module",
    top: int = 30,
    title: str | None = None,
) -> str:
    """A horizontal bar chart of saved bytes by module (or op), largest first.

    Needs matplotlib; writes ``path`` (the format from its suffix) and returns it.
    """
    if by not in ("op", "module"):
        raise ValueError(f"by={by!r}; a chart is by 'module' or 'op'.")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    split = saved_memory(graph, by=by)
    items = sorted(split.items(), key=lambda kv: -kv[1])[:top]
    labels = ["(no module)" if k is None else str(k) for k, _ in items]
    values = [v / 2**20 for _, v in items]
    fig, ax = plt.subplots(figsize=(7, 0.28 * len(items) + 1.2))
    try:
        ax.barh(range(len(items)), values)
        ax.set_yticks(range(len(items)), labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("saved for backward (MiB)")
        total = saved_memory(graph) / 2**20
        ax.set_title(title or f"activation memory by {by}: {total:.2f} MiB in all")
        fig.tight_layout()
        fig.savefig(os.fspath(path))
    finally:
        plt.close(fig)
    return os.fspath(path)


def memory_dot(graph: GradGraph, **options: Any) -> str:
    """DOT text with each node shaded by the bytes charged to it (and the bytes
    in its box); options as for
    :func:`gradgraph.render.emphasis.emphasized_dot` (e.g. ``collapse=``)."""
    from .render.emphasis import emphasized_dot

    return emphasized_dot(graph, **_shading(graph, options))


def render_memory(
    graph: GradGraph, path: str | os.PathLike, format: str = "svg", **options: Any
) -> str:
    """Write :func:`memory_dot`'s picture to ``path``; returns it."""
    from .render.emphasis import render_emphasized

    return render_emphasized(graph, path, format, **_shading(graph, options))


def _shading(graph: GradGraph, options: dict) -> dict:
    per_node = saved_bytes_by_node(graph)
    total = sum(per_node.values())
    options.setdefault("title", f"saved for backward: {total / 2**20:.2f} MiB")
    return {"shade": per_node, "shade_text": _saves} | options


def _saves(nbytes: float) -> str:
    return f"saves {nbytes / 1024:.1f} KiB"
