"""Keep a traced graph safe to free, however deep.

Why this exists: in torch's current autograd (``intrusive_ptr<Node>`` with
PyObject preservation) a grad_fn that Python has touched keeps its Python
wrapper for as long as the node lives, and the wrapper owns a reference to the
node. torch frees a graph iteratively (``Node::~Node`` ->
``releaseGraphIteratively``) only through children it owns alone
(``use_count() == 1``); a child with a wrapper has a second owner, so torch just
drops its edge, the wrapper's last reference goes, and the wrapper's dealloc
deletes the child *inside* the parent's destructor: one C++ recursion level per
node. After any Python walk of ``next_functions`` (gradgraph's, torchviz's, a
plain loop) deleting the output of a chain deeper than ~50,000 nodes overflows
the default 8 MB C stack and kills the process.

What it does: the grad_fn of every traced output gets, under
``grad_fn.metadata[RELEASE_KEY]``, a tuple of the wrappers of the nodes below it
in parents-first order (stored reversed: CPython releases a tuple's items last
to first). When that grad_fn dies, torch drops its edges first (the children
survive, the tuple holds them), then its metadata, and the tuple lets go of the
nodes one by one, each with its own children still held: no recursion. The
tuple holds only nodes the output already keeps alive, so it keeps no memory
alive for longer.

Example:
    >>> import torch
    >>> x = torch.ones(1, requires_grad=True)
    >>> y = x
    >>> for _ in range(MIN_NODES):
    ...     y = y * 1.0
    >>> from gradgraph import trace
    >>> len(trace(y).dag), len(y.grad_fn.metadata[RELEASE_KEY])
    (1001, 999)
"""

from __future__ import annotations

from math import isqrt
from typing import Any

RELEASE_KEY = "gradgraph.release_order"
"""The ``grad_fn.metadata`` key under which a traced output keeps its graph."""

MIN_NODES = 1_000
"""Graphs smaller than this cannot recurse deep enough to matter; left as is."""


def parents_first(succ: dict[int, dict]) -> list[int]:
    """A topological order of a DAG given as ``{node: {child: ...}}`` (Kahn)."""
    indegree = dict.fromkeys(succ, 0)
    for children in succ.values():
        for child in children:
            indegree[child] += 1
    order = [node for node, d in indegree.items() if d == 0]
    for node in order:  # the list grows while we walk it
        for child in succ[node]:
            indegree[child] -= 1
            if indegree[child] == 0:
                order.append(child)
    return order


def _below(succ: dict[int, dict], root: int) -> set[int]:
    seen = {root}
    stack = [root]
    while stack:
        for child in succ[stack.pop()]:
            if child not in seen:
                seen.add(child)
                stack.append(child)
    return seen


def band_regions(succ: dict[int, dict], order: list[int]) -> dict[int, list[int]]:
    """Guards for intermediate tensors that outlive the traced outputs.

    Nodes are cut into bands of ``width`` levels (level: longest path from a
    source); a node entered from a shallower band is a *guard*, so every path of
    more than ``width`` nodes passes one. Each guard gets the nodes below it up
    to the next guards, parents first. Freeing any node then cascades at most
    ``width`` levels before a guard releases its region flat. Empty when the
    graph is shallower than one band.
    """
    n = len(order)
    level = [0] * n
    for node in order:
        below = level[node] + 1
        for child in succ[node]:
            if level[child] < below:
                level[child] = below
    width = max(MIN_NODES, isqrt(n))
    if max(level) < width:
        return {}
    band = [lv // width for lv in level]
    region: list[int | None] = [None] * n
    for node in order:
        for child in succ[node]:
            if band[child] > band[node]:
                region[child] = child
    regions: dict[int, list[int]] = {}
    for node in order:
        owner = region[node]
        if owner is None:
            continue
        if owner != node:
            regions[owner].append(node)
        else:
            regions[node] = []
        for child in succ[node]:
            if region[child] is None:
                region[child] = owner
    return regions


def guard_deep_free(fns: list, succ: dict[int, dict], roots: list[int]) -> None:
    """Attach release orders to the grad_fns of the roots and of band guards.

    ``fns[i]`` is the grad_fn of node ``i``; ``succ`` the DAG's adjacency. Nodes
    without children (AccumulateGrad, mostly) cannot recurse and are left out,
    and so are roots with fewer than ``MIN_NODES`` nodes below them. A graph
    with fewer than ``MIN_NODES`` nodes that have children cannot have a path
    that long, so it is left as is (a 300-layer MLP: 1,502 nodes, 902 inner).
    """
    if len(fns) < MIN_NODES or sum(map(bool, succ.values())) < MIN_NODES:
        return
    order = parents_first(succ)
    for guard, nodes in band_regions(succ, order).items():
        _set_metadata(fns[guard], tuple(fns[v] for v in reversed(nodes) if succ[v]))
    for root in roots:
        if not succ[root]:
            continue
        below = _below(succ, root) if len(roots) > 1 else None
        if below is not None and len(below) < MIN_NODES:
            continue
        keep = tuple(
            fns[node]
            for node in reversed(order)
            if succ[node] and node != root and (below is None or node in below)
        )
        _set_metadata(fns[root], keep)


def _set_metadata(fn: Any, keep: tuple) -> None:
    try:
        fn.metadata[RELEASE_KEY] = keep
    except (AttributeError, RuntimeError, TypeError):  # a node without metadata
        pass
