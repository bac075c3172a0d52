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
4. ``max_nodes=N`` or ``depth=k`` fold by the module tree, repeated blocks
   as one ``×N`` box, to at most N boxes: :mod:`gradgraph.render.fold`
   (``"modules"`` then keeps every module without submodules a box;
   ``"chains"`` folds chains afterwards). There is no "+N more" box.

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
from ..nodes import ACCUMULATE, CHAIN, MODULE, OP

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
    depth: int | None = None,
) -> GradGraph:
    """A smaller GradGraph of boxes, by the rule in this module's docstring.

    Args:
        graph: the traced graph (left unchanged).
        mode: ``"chains"``, ``"modules"``, ``True``/``"all"`` (both), or
            ``None``/``False`` (only what ``max_nodes`` needs).
        max_nodes: fold further until at most this many boxes remain.
        min_chain: shortest chain worth folding.
        depth: expand modules only down to this depth (``1``: top-level
            modules are boxes); see :mod:`gradgraph.render.fold`.
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
    if depth is not None and (not isinstance(depth, int) or depth < 1):
        raise ValueError(f"depth={depth!r}; give an int of at least 1 (or None).")
    steps = MODES[mode]
    if max_nodes is not None and len(graph) <= max_nodes and not steps:
        if depth is None:
            return graph
    with _gc_paused():  # many small dicts, none of them garbage
        return _collapse(graph, steps, max_nodes, min_chain, depth)


def _collapse(
    graph: GradGraph,
    steps: tuple,
    max_nodes: int | None,
    min_chain: int,
    depth: int | None,
):
    if max_nodes is None and depth is None:
        out = fold_modules(graph, depth=None) if "modules" in steps else graph
        return fold_chains(out, min_chain) if "chains" in steps else out
    from .fold import fold_to_budget  # fold builds on this module's quotient

    keep = "modules" in steps
    out = fold_to_budget(graph, max_nodes, depth, keep_leaves=keep, min_chain=min_chain)
    if "chains" not in steps:
        return out
    if max_nodes is None:
        return fold_chains(out, min_chain)
    return _fit_chains(out, max_nodes, min_chain) or out  # pieces use the budget


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
    if kind in (OP, CHAIN):
        if data.get("name"):
            return None
        return (data.get("order"), data.get("cluster", data.get("module")))
    if kind == MODULE:
        if "cluster" in data:
            return (data.get("order"), "module:" + (data["cluster"] or ""))
        parent = data["module"].rsplit(".", 1)[0] if "." in data["module"] else ""
        return (data.get("order"), "module:" + parent)
    return None


def _maximal_chains(graph: GradGraph, min_chain: int = 3) -> list[list[int]]:
    """The maximal linear chains of rule 2 with at least ``min_chain`` nodes,
    each listed from the root side (the end of the forward pass) down."""
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
    chains = []
    for head in sorted(link):
        if head in linked_to:
            continue
        chain = [head]
        while chain[-1] in link:
            chain.append(link[chain[-1]])
        if len(chain) >= min_chain:
            chains.append(chain)
    return chains


def fold_chains(
    graph: GradGraph, min_chain: int = 3, piece: int | None = None
) -> GradGraph:
    """Merge maximal linear chains of at least ``min_chain`` foldable nodes.

    With ``piece``, a longer chain becomes several boxes of at most ``piece``
    nodes, cut from its forward end (a piece of one node stays a node).
    """
    chains = _maximal_chains(graph, min_chain)
    return _fold_chain_list(graph, chains, [piece] * len(chains))


def _fit_chains(
    graph: GradGraph, max_nodes: int, min_chain: int = 3
) -> GradGraph | None:
    """Fold chains into pieces as small as ``max_nodes`` boxes allow; None if
    even whole chains leave more than ``max_nodes`` boxes.

    A chain that repeats a pattern (Linear, LayerNorm, Tanh, Linear...) is cut
    into whole repeats when that still uses a quarter of the budget or more.
    """
    chains = _maximal_chains(graph, min_chain)
    lengths = [len(c) for c in chains]
    fixed = len(graph) - sum(lengths)
    if fixed + len(chains) > max_nodes:
        return None
    periods = [_period(graph.dag, chain) for chain in chains]
    for steps in (periods, [1] * len(chains)):
        units = [-(-n // p) for n, p in zip(lengths, steps, strict=True)]
        size = _smallest_group(units, max_nodes - fixed)
        pieces = [size * p for p in steps]
        boxes = fixed + sum(-(-n // k) for n, k in zip(lengths, pieces, strict=True))
        if boxes * 4 >= max_nodes:
            break
    return _fold_chain_list(graph, chains, pieces)


def _smallest_group(counts: list[int], budget: int) -> int:
    """The smallest ``k`` for which cutting each count into groups of at most
    ``k`` gives at most ``budget`` groups (``k = max(counts)`` gives one each,
    which the callers know fits)."""
    low, high = 1, max(counts, default=1)
    while low < high:
        mid = (low + high) // 2
        if sum(-(-n // mid) for n in counts) <= budget:
            high = mid
        else:
            low = mid + 1
    return low


def _period(dag: nx.DiGraph, chain: list[int], longest: int = 16) -> int:
    """The shortest repeat of the ops in a chain of module boxes (1 if none)."""
    if dag._node[chain[0]]["kind"] != MODULE:
        return 1
    forward = [tuple(dag._node[n]["ops"].items()) for n in reversed(chain)]
    for period in range(1, min(longest, len(forward) // 2) + 1):
        if all(forward[i] == forward[i - period] for i in range(period, len(forward))):
            return period
    return 1


def _fold_chain_list(
    graph: GradGraph, chains: list, pieces: list[int | None]
) -> GradGraph:
    """Fold each chain into boxes of at most its ``pieces`` entry (None: whole)."""
    dag = graph.dag
    group: dict[int, int] = {}
    boxes: dict[int, dict] = {}
    for chain, piece in zip(chains, pieces, strict=True):
        forward = chain[::-1]
        step = piece or len(forward)
        for start in range(0, len(forward), step):
            part = forward[start : start + step]
            if len(part) < 2:
                continue
            rep = min(part)  # a box's id is its smallest member, so min(part) is too
            boxes[rep] = _chain_box([(n, dag._node[n]) for n in part])
            group.update(dict.fromkeys(part, rep))
    return _quotient(graph, group, boxes)


def _chain_box(items: list[tuple[int, dict]]) -> dict:
    """A box for a chain ``items`` listed in forward order."""
    first, last = items[0][1], items[-1][1]
    placed = {"cluster": first["cluster"]} if "cluster" in first else {}
    if first["kind"] == MODULE:  # a chain of sibling modules
        names = [d["module"] for _, d in items]
        parent = names[0].rsplit(".", 1)[0] if "." in names[0] else None
        return _box(CHAIN, items[::-1], _span(names), module=parent, **placed)
    label = f"{_short(first)} … {_short(last)}"  # forward order
    return _box(CHAIN, items[::-1], label, module=first.get("module"), **placed)


def _span(names: list[str]) -> str:
    """``encoder.0–49 (50 modules)`` for sibling modules listed in order
    (``encoder … head (2 modules)`` when the names are not numbered 0, 1...)."""
    parts = [n.rsplit(".", 1)[-1] for n in names]
    numbered = all(p.isdigit() for p in parts) and [int(p) for p in parts] == list(
        range(int(parts[0]), int(parts[0]) + len(parts))
    )
    dash = "–" if numbered else " … "
    return f"{names[0]}{dash}{parts[-1]} ({len(names)} modules)"


def _short(data: dict) -> str:
    if data["kind"] == MODULE:
        return data["module"]
    if data["kind"] == CHAIN:
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
        if not module and data["kind"] == ACCUMULATE:
            module = parameter_module(data.get("name"), known)
        if module:
            if depth is not None:
                module = ".".join(module.split(".")[:depth])
            by_module.setdefault(module, []).append(node)
    group: dict[int, int] = {}
    boxes: dict[int, dict] = {}
    for module, nodes in by_module.items():
        if len(nodes) == 1 and dag._node[nodes[0]]["kind"] == MODULE:
            continue
        nodes.sort()
        items = [(n, dag._node[n]) for n in nodes]
        box = _box(MODULE, items, "", module=module)
        box["label"] = box["op"] = f"{module} · {_count(len(box['members']))}"
        boxes[nodes[0]] = box
        group.update(dict.fromkeys(nodes, nodes[0]))
    return _quotient(graph, group, boxes)


def _count(n: int) -> str:
    """``1 node``, ``1,234 nodes``."""
    return f"{n:,} node{'' if n == 1 else 's'}"


def _natural(name: str) -> tuple:
    """Sort key: ``layer.2`` before ``layer.10``."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in name.split("."))


def member_box(collapsed: GradGraph) -> dict[int, int]:
    """Original node id -> the id of the box that holds it in ``collapsed``."""
    return {
        m: box
        for box, members in collapsed.dag.nodes(data="members")
        for m in (members or (box,))
    }
