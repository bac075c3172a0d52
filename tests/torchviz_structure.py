"""Read the structure out of a torchviz Digraph, for conformance tests.

torchviz names each node ``str(id(obj))`` and draws edges child -> parent. Its
graph has the grad_fn nodes (drawn without a fillcolor) plus tensor nodes of
its own (leaf variables, outputs, view bases, saved tensors: all filled).
``torchviz_structure`` keeps the grad_fn nodes and their edges (parent ->
child); ``our_structure`` gives the same view of a GradGraph traced with
``keep=True``.
"""

from __future__ import annotations

import re

_NODE = re.compile(r"^\t(\d+) \[(.*)\]$", re.S)
_EDGE = re.compile(r"^\t(\d+) -> (\d+)")


def torchviz_structure(dot) -> tuple[set[int], set[tuple[int, int]]]:
    nodes, tensors, edges = set(), set(), []
    for line in dot.body:
        if m := _EDGE.match(line):
            edges.append((int(m.group(2)), int(m.group(1))))
        elif m := _NODE.match(line.rstrip("\n")):
            (tensors if "fillcolor" in m.group(2) else nodes).add(int(m.group(1)))
    nodes -= tensors
    return nodes, {(p, c) for p, c in edges if p in nodes and c in nodes}


def our_structure(graph) -> tuple[set[int], set[tuple[int, int]]]:
    ids = {n: id(graph.grad_fn(n)) for n in graph.dag}
    return set(ids.values()), {(ids[u], ids[v]) for u, v in graph.dag.edges}
