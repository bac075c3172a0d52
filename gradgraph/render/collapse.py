"""Folding big graphs into pictures a reader can take in: chains and modules.

The rule (every step merges groups of nodes into one box):

1. ``collapse="modules"`` merges the nodes created by one module's forward (node
   attribute ``module``, e.g. ``"encoder.layer.3"``; see
   :func:`gradgraph.record_modules`) into one box. An AccumulateGrad node whose
   parameter name starts with a module's name (``encoder.layer.3.weight``)
   belongs to that module.
2. ``collapse="chains"`` merges every maximal linear chain of at least
   ``min_chain`` nodes ``u1 -> u2 -> ... -> uk`` in which each ``ui`` but the
   last has exactly one successor, each but the first exactly one predecessor,
   and all share derivative order and module. Roots, AccumulateGrad nodes and
   named nodes are never folded into a chain; module boxes chain with sibling
   modules (same parent module).
3. ``collapse=True`` (or ``"all"``) does 1 then 2.
4. ``max_nodes=N``: while the result has more than N boxes, fold chains, then
   modules at shallower and shallower depth (``encoder.layer.3`` ->
   ``encoder.layer`` -> ``encoder``), folding chains after each; if it is still
   above N, keep the N-1 boxes first in walk order and merge the rest into one
   ``+M more nodes`` box.

Each step is a quotient: a box has an edge to another box whenever one of its
nodes had an edge to one of the other's, so every path of the original graph is
still a path (from box to box) in the collapsed one. A box's ``members`` lists
the original node ids it holds; its id is its smallest member, so the result is
deterministic.

Example:
    >>> import torch
    >>> from gradgraph import trace
    >>> x = torch.ones(2, requires_grad=True)
    >>> y = x
    >>> for _ in range(100):
    ...     y = y.sin()
    >>> small = collapse(trace(y.sum()), "chains")
    >>> sorted(d["kind"] for _, d in small.dag.nodes(data=True))
    ['accumulate', 'chain', 'root']
"""

from __future__ import annotations

from collections import Counter

import networkx as nx

from ..graph import GradGraph, _gc_paused

MODES = {
    None: (),
    False: (),
    "chains": ("chains",),
    "modules": ("modules",),
    "all": ("modules", "chains"),
    True: ("modules", "chains"),
}


def collapse(
    graph: GradGraph,
    mode: str | bool | None = True,
    max_nodes: int | None = None,
    min_chain: int = 3,
) -> GradGraph:
    """A smaller GradGraph of boxes, by the rule in this module's docstring.

    Args:
        graph: the traced graph (left unchanged).
        mode: ``"chains"``, ``"modules"``, ``True``/``"all"`` (both), or
            ``None``/``False`` (only what ``max_nodes`` needs).
        max_nodes: fold further until at most this many boxes remain.
        min_chain: shortest chain worth folding.
    """
    if mode not in MODES:
        raise ValueError(
            f"collapse={mode!r} is not a collapse mode; use 'chains', 'modules', "
            "True (both) or None."
        )
    if max_nodes is not None and (not isinstance(max_nodes, int) or max_nodes < 2):
        raise ValueError(f"max_nodes={max_nodes!r}; give an int of at least 2.")
    if min_chain < 2:
        raise ValueError(f"min_chain={min_chain!r}; a chain has at least 2 nodes.")
    steps = MODES[mode]
    if max_nodes is not None and len(graph) <= max_nodes and not steps:
        return graph
    with _gc_paused():  # many small dicts, none of them garbage
        return _collapse(graph, steps, max_nodes, min_chain)


def _collapse(graph: GradGraph, steps: tuple, max_nodes: int | None, min_chain: int):
    out = graph
    if "modules" in steps:
        out = fold_modules(out, depth=None)
    if "chains" in steps:
        out = fold_chains(out, min_chain)
    if max_nodes is None or len(out) <= max_nodes:
        return out
    out = fold_chains(out, min_chain)
    depth = max((_depth(m) for m in _modules(out.dag)), default=0)
    while len(out) > max_nodes and depth > 0:
        out = fold_chains(fold_modules(out, depth), min_chain)
        depth -= 1
    if len(out) > max_nodes:
        out = fold_rest(out, max_nodes)
    return out


def _depth(module: str) -> int:
    return module.count(".") + 1


def _modules(dag: nx.DiGraph) -> set[str]:
    return {m for _, m in dag.nodes(data="module") if m}


def parameter_module(name: str | None, known: set[str]) -> str | None:
    """The longest known module name that prefixes a parameter name, if any."""
    while name and "." in name:
        name = name.rsplit(".", 1)[0]
        if name in known:
            return name
    return None


def _quotient(graph: GradGraph, group: dict[int, int], boxes: dict) -> GradGraph:
    """Merge each node into ``group[node]`` (absent: itself); boxes give new data.

    Filled in bulk like ``graph._build_dag``: node and edge data dicts of the
    nodes that stay are shared with ``graph`` (never changed), not copied.
    """
    dag = graph.dag
    nodes = {}
    for node, data in dag._node.items():
        rep = group.get(node, node)
        if rep == node:
            nodes[node] = boxes.get(node, data)
    succ: dict[int, dict] = {n: {} for n in nodes}
    pred: dict[int, dict] = {n: {} for n in nodes}
    get = group.get
    for u, targets in dag._succ.items():
        a = get(u, u)
        out = succ[a]
        for v, data in targets.items():
            b = get(v, v)
            if a != b and b not in out:
                out[b] = data
                pred[b][a] = data
    new = nx.DiGraph()
    new._node.update(nodes)
    new._succ.update(succ)
    new._pred.update(pred)
    roots = list(dict.fromkeys(get(r, r) for r in graph.roots))
    outputs = [dict(o, node=get(o["node"], o["node"])) for o in graph.outputs]
    return GradGraph(new, roots, outputs)


def _box(kind: str, items: list[tuple[int, dict]], label: str, **extra) -> dict:
    """Data for a box holding the nodes (or boxes) ``items``; first is the top."""
    ops: Counter = Counter()
    ids: list[int] = []
    for node, data in items:
        if "ops" in data:
            ops.update(data["ops"])
            ids.extend(data["members"])
        else:
            ops[data["op"]] += 1
            ids.append(node)
    top = items[0][1]
    orders = {d.get("order") for _, d in items}
    return {
        "op": label,
        "kind": kind,
        "label": label,
        "name": None,
        "shape": top.get("shape"),
        "dtype": top.get("dtype"),
        "seq_nr": None,
        "saved": (),
        "order": orders.pop() if len(orders) == 1 else None,
        "members": tuple(sorted(ids)),
        "ops": dict(sorted(ops.items())),
        **extra,
    }


def _chain_key(data: dict) -> tuple | None:
    """Nodes chain only with nodes of the same key; None: never in a chain."""
    kind = data["kind"]
    if kind in ("op", "chain"):
        if data.get("name"):
            return None
        return (data.get("order"), data.get("module"))
    if kind == "module":
        parent = data["module"].rsplit(".", 1)[0] if "." in data["module"] else ""
        return (data.get("order"), "module:" + parent)
    return None


def fold_chains(graph: GradGraph, min_chain: int = 3) -> GradGraph:
    """Merge maximal linear chains of at least ``min_chain`` foldable nodes."""
    dag = graph.dag
    roots = set(graph.roots)
    key = {
        n: k
        for n, d in dag.nodes(data=True)
        if n not in roots and (k := _chain_key(d)) is not None
    }
    succ, pred = dag._succ, dag._pred
    link: dict[int, int] = {}
    for u in key:
        if len(succ[u]) == 1:
            (v,) = succ[u]
            if v in key and len(pred[v]) == 1 and key[v] == key[u] and v != u:
                link[u] = v
    linked_to = set(link.values())
    group: dict[int, int] = {}
    boxes: dict[int, dict] = {}
    for head in sorted(link):
        if head in linked_to:
            continue
        chain = [head]
        while chain[-1] in link:
            chain.append(link[chain[-1]])
        if len(chain) < min_chain:
            continue
        items = [(n, dag._node[n]) for n in chain]
        rep = min(chain)  # a box's id is its smallest member, so min(chain) is too
        first, last = items[0][1], items[-1][1]
        label = f"{_short(last)} … {_short(first)}"  # forward order
        module = first.get("module")
        if first["kind"] == "module":  # a chain of sibling modules
            module = module.rsplit(".", 1)[0] if "." in module else None
        boxes[rep] = _box("chain", items, label, module=module)
        group.update(dict.fromkeys(chain, rep))
    return _quotient(graph, group, boxes)


def _short(data: dict) -> str:
    if data["kind"] == "module":
        return data["module"]
    if data["kind"] == "chain":
        return data["label"]
    return data["op"]


def fold_modules(graph: GradGraph, depth: int | None = None) -> GradGraph:
    """Merge the nodes of each module (names cut to ``depth`` parts) into a box.

    AccumulateGrad nodes without a module join the module their parameter name
    starts with (``encoder.0.lin.weight`` -> ``encoder.0.lin``).
    """
    dag = graph.dag
    known = _modules(dag)
    by_module: dict[str, list[int]] = {}
    for node, data in dag._node.items():
        module = data.get("module")
        if not module and data["kind"] == "accumulate":
            module = parameter_module(data.get("name"), known)
        if module:
            if depth is not None:
                module = ".".join(module.split(".")[:depth])
            by_module.setdefault(module, []).append(node)
    group: dict[int, int] = {}
    boxes: dict[int, dict] = {}
    for module, nodes in by_module.items():
        if len(nodes) == 1 and dag._node[nodes[0]]["kind"] == "module":
            continue
        nodes.sort()
        items = [(n, dag._node[n]) for n in nodes]
        box = _box("module", items, "", module=module)
        box["label"] = box["op"] = f"{module} · {len(box['members'])} nodes"
        boxes[nodes[0]] = box
        group.update(dict.fromkeys(nodes, nodes[0]))
    return _quotient(graph, group, boxes)


def fold_rest(graph: GradGraph, max_nodes: int) -> GradGraph:
    """Keep the first ``max_nodes - 1`` boxes in walk order; merge the rest."""
    nodes = sorted(graph.dag.nodes)
    keep = set(graph.roots)
    for node in nodes:
        if len(keep) >= max_nodes - 1:
            break
        keep.add(node)
    rest = [n for n in nodes if n not in keep]
    if not rest:
        return graph
    box = _box("more", [(n, graph.dag._node[n]) for n in rest], "")
    box["label"] = box["op"] = f"+{len(box['members']):,} more nodes"
    return _quotient(graph, dict.fromkeys(rest, rest[0]), {rest[0]: box})


def member_box(collapsed: GradGraph) -> dict[int, int]:
    """Original node id -> the id of the box that holds it in ``collapsed``."""
    return {
        m: box
        for box, members in collapsed.dag.nodes(data="members")
        for m in (members or (box,))
    }
