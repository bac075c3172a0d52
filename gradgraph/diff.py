"""diff_graphs(): which nodes two traces share, which are new, which were freed.

Two traces number their nodes independently, so nodes are matched by what
they are. When both graphs kept their grad_fn objects (``keep=True``) the
match is by identity. Otherwise an op node is matched by ``(op, seq_nr)``
(torch's creation counter, unique per thread), a node without one (an
AccumulateGrad) through a matched parent and the same ``input_nr`` (a node's
``next_functions`` never change), and what is still left by ``(op, name,
shape)`` when that is unique on both sides (named leaves: the same parameter
in two forward passes).

Example:
    >>> import torch
    >>> from gradgraph import trace
    >>> x = torch.ones(2, requires_grad=True)
    >>> y = (x.exp() * 2).sum()
    >>> before = trace(y)
    >>> _ = y.backward()
    >>> d = diff_graphs(before, trace(y))
    >>> len(d.added), len(d.removed), [d.b.dag.nodes[n]["op"] for n in d.freed]
    (0, 0, ['MulBackward0', 'ExpBackward0'])
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from .graph import GradGraph

__all__ = ["GraphDiff", "diff_graphs"]


@dataclass(frozen=True)
class GraphDiff:
    """The difference from graph ``a`` to graph ``b``.

    Attributes:
        matched: node of ``a`` -> the same node in ``b``.
        added: nodes of ``b`` that ``a`` lacks (ids in ``b``).
        removed: nodes of ``a`` that ``b`` lacks (ids in ``a``).
        freed: nodes of ``b`` whose saved tensors ``b`` shows freed and ``a``
            did not (a backward without retain_graph ran in between).
    """

    a: GradGraph = field(repr=False)
    b: GradGraph = field(repr=False)
    matched: dict[int, int]
    added: list[int]
    removed: list[int]
    freed: list[int]

    def summary(self) -> dict:
        """Counts, the ops added, and the saved bytes added (held in ``b``)."""
        nodes = self.b.dag.nodes
        return {
            "matched": len(self.matched),
            "added": len(self.added),
            "removed": len(self.removed),
            "freed": len(self.freed),
            "added_by_op": dict(
                sorted(Counter(nodes[n]["op"] for n in self.added).items())
            ),
            "added_saved_bytes": sum(
                s["nbytes"]
                for n in self.added
                for s in nodes[n]["saved"]
                if not s["freed"]
            ),
        }


def diff_graphs(a: GradGraph, b: GradGraph) -> GraphDiff:
    """Match the nodes of ``a`` and ``b`` and say what was added, removed, freed.

    Args:
        a: the earlier graph (e.g. ``trace(loss)`` before a backward).
        b: the later one (e.g. an :func:`~gradgraph.expansion.expand` graph).
    """
    if not isinstance(b, GradGraph):
        raise TypeError(
            f"diff() compares two GradGraphs, got {type(b).__name__}; trace the "
            "other outputs first, e.g. g.diff(gradgraph.trace(y))."
        )
    if a._fns is not None and b._fns is not None:
        matched = _match_by_identity(a, b)
    else:
        matched = _match_by_structure(a, b)
    taken = set(matched.values())
    added = [n for n in b.dag if n not in taken]
    removed = [n for n in a.dag if n not in matched]
    freed = [
        v
        for u, v in matched.items()
        if _freed_attrs(b.dag.nodes[v]) - _freed_attrs(a.dag.nodes[u])
    ]
    return GraphDiff(a, b, matched, added, removed, sorted(freed))


def _freed_attrs(data: dict) -> set[str]:
    return {s["attr"] for s in data["saved"] if s["freed"]}


def _match_by_identity(a: GradGraph, b: GradGraph) -> dict[int, int]:
    index = {fn: i for i, fn in enumerate(b._fns)}
    return {u: index[fn] for u, fn in enumerate(a._fns) if fn in index}


def _unique(graph: GradGraph, key) -> dict:
    """key(data) -> node, for keys that exactly one node of ``graph`` has."""
    seen: dict = {}
    for node, data in graph.dag.nodes(data=True):
        k = key(data)
        if k is not None:
            seen[k] = None if k in seen else node
    return {k: n for k, n in seen.items() if n is not None}


def _by_seq_nr(data: dict):
    return None if data["seq_nr"] is None else (data["op"], data["seq_nr"])


def _by_name(data: dict):
    if data["seq_nr"] is not None or data["name"] is None:
        return None
    return (data["op"], data["name"], data["shape"])


def _match_by_structure(a: GradGraph, b: GradGraph) -> dict[int, int]:
    matched: dict[int, int] = {}
    taken: set[int] = set()

    def pair(u: int, v: int) -> bool:
        if v in taken or a.dag.nodes[u]["op"] != b.dag.nodes[v]["op"]:
            return False
        matched[u] = v
        taken.add(v)
        return True

    in_b = _unique(b, _by_seq_nr)
    for key, u in _unique(a, _by_seq_nr).items():
        if key in in_b:
            pair(u, in_b[key])
    _propagate(a, b, matched, pair)
    in_b = _unique(b, _by_name)
    for key, u in _unique(a, _by_name).items():
        if u not in matched and key in in_b:
            pair(u, in_b[key])
    _propagate(a, b, matched, pair)
    return matched


def _propagate(a: GradGraph, b: GradGraph, matched: dict, pair) -> None:
    """Match next functions of matched nodes by their position (``input_nr``)."""
    b_next = {
        (u, d["input_nr"]): v for u, v, d in b.dag.edges(data=True) if "input_nr" in d
    }
    stack = list(matched)
    while stack:
        u = stack.pop()
        for v, d in a.dag._succ[u].items():
            if v in matched or "input_nr" not in d:
                continue
            target = b_next.get((matched[u], d["input_nr"]))
            if target is not None and pair(v, target):
                stack.append(v)
