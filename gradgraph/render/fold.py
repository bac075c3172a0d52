"""Folding a graph to a box budget while keeping its structure: the module tree.

Every node belongs to a module: the one :func:`gradgraph.record_modules`
recorded, or, when none was recorded, one inferred from parameter names (an
op that reads a parameter ``h.3.attn.weight`` is in ``h.3.attn``; an op with
no parameter input goes with its most recently created input, except the
single-input ops that end the graph, like a loss, which stay on top). The dotted
names form a tree. The picture starts with every top-level module folded into
one box, then expands the biggest box while the total stays within the
budget (``max_nodes``) and the module is shallower than ``depth``:

- an expanded module draws its own ops as nodes and its children as boxes,
  inside a cluster;
- consecutive siblings with the same structure (the 12 blocks of a
  transformer, ``Linear, Tanh`` pairs of a Sequential) are one box marked
  ``×N``; expanding it shows the first block and keeps ``×(N-1)`` for the rest
  (like torchview's ``roll``).

No box may form a cycle with the rest (the picture must stay a DAG): a box in
a cycle is split (its module expanded, its repeats unrolled) until none is
left. Loose ops beyond the budget fold into chain pieces, and as a last resort
into bands of consecutive depth levels (always acyclic). There is never a
"+N more" box.

Box attributes (plain data, for renderers and the HTML viewer): ``members``
(original node ids), ``module`` (dotted name; for ``×N`` boxes the first
block's), ``cluster`` (the expanded module the box is drawn in, None at the
top), ``repeat`` (N for ``×N`` boxes) and ``blocks`` (their block names).
Loose nodes carry ``cluster`` too.

Example:
    >>> import torch
    >>> from gradgraph import trace
    >>> model = torch.nn.Sequential(*[torch.nn.Linear(2, 2) for _ in range(6)])
    >>> g = trace(model(torch.ones(1, 2)).sum(), model=model)
    >>> small = fold_to_budget(g, max_nodes=8)
    >>> sorted(d["label"] for _, d in small.dag.nodes(data=True) if d.get("repeat"))
    ['1–5 ×5']
"""

from __future__ import annotations

import heapq
from collections import Counter

import networkx as nx

from ..graph import GradGraph, inputs_first
from ..nodes import ACCUMULATE, MODULE, MORE
from .collapse import _box, _fit_chains, _natural, _quotient, parameter_module

_NO_SEQ = 2**64 - 1
DEFAULT_MAX_NODES = 200  # what render(), to_svg() and Jupyter draw by default


def node_modules(graph: GradGraph) -> dict[int, str]:
    """Node id -> its module name (absent: top level); see the module docstring."""
    dag = graph.dag
    recorded = {m for _, m in dag.nodes(data="module") if m}
    out: dict[int, str] = {}
    if recorded:
        for node, data in dag._node.items():
            module = data.get("module")
            if not module and data["kind"] == ACCUMULATE:
                module = parameter_module(data.get("name"), recorded)
            if module:
                out[node] = module
        return out
    tail = _tail(graph)
    for node in inputs_first(graph):
        data = dag._node[node]
        name = data.get("name")
        if node in tail:
            continue
        if data["kind"] == ACCUMULATE:
            if name and "." in name and not data.get("input"):
                out[node] = name.rsplit(".", 1)[0]
            continue
        inputs = dag._succ[node]
        params = [
            out[v] for v in inputs if v in out and dag._node[v]["kind"] == ACCUMULATE
        ]
        if params:
            out[node] = _common(params)
            continue
        latest = max(
            (v for v in inputs if v in out),
            key=lambda v: (_seq(dag._node[v]), -v),
            default=None,
        )
        if latest is not None:
            out[node] = out[latest]
    return out


def _tail(graph: GradGraph) -> set[int]:
    """The ops after the model (a loss like ``.pow(2).mean()``): from each root
    down while a node has exactly one input and it is not a leaf. They stay at
    the top level instead of joining the last layer."""
    dag, tail = graph.dag, set()
    for node in graph.roots:
        while node not in tail and dag._node[node]["kind"] != ACCUMULATE:
            inputs = dag._succ[node]
            if len(inputs) != 1:
                break
            tail.add(node)
            (node,) = inputs
            if dag._node[node]["kind"] == ACCUMULATE:
                break
    return tail


def _seq(data: dict) -> int:
    seq = data.get("seq_nr")
    return -1 if seq is None or seq == _NO_SEQ else seq


def _common(names: list[str]) -> str | None:
    parts = [n.split(".") for n in names]
    shared = []
    for level in zip(*parts, strict=False):
        if len(set(level)) > 1:
            break
        shared.append(level[0])
    return ".".join(shared) or None


def _depth(module: str) -> int:
    return module.count(".") + 1 if module else 0


class _Tree:
    """Modules as a tree: direct nodes, children, subtree sizes, repeat runs."""

    def __init__(self, graph: GradGraph):
        self.module_of = node_modules(graph)
        self.direct: dict[str, list[int]] = {"": []}
        self.children: dict[str, list[str]] = {"": []}
        for node in graph.dag._node:
            module = self.module_of.get(node, "")
            self._add(module)
            self.direct[module].append(node)
        for module in self.children:
            self.children[module].sort(key=_natural)
        self.size: dict[str, int] = {}
        for module in sorted(self.direct, key=_depth, reverse=True):
            self.size[module] = len(self.direct[module]) + sum(
                self.size[c] for c in self.children[module]
            )
        self.ops = {n: (d["op"], d.get("shape")) for n, d in graph.dag._node.items()}
        self.succ = graph.dag._succ
        self._sig: dict[str, tuple] = {}

    def _add(self, module: str) -> None:
        while module not in self.direct:
            self.direct[module] = []
            self.children[module] = []
            parent = module.rsplit(".", 1)[0] if "." in module else ""
            self.children.setdefault(parent, [])
            self._add(parent)  # depth of recursion = depth of the name (small)
            self.children[parent].append(module)

    def nodes(self, module: str) -> list[int]:
        """Every node in ``module``'s subtree."""
        out, stack = [], [module]
        while stack:
            m = stack.pop()
            out.extend(self.direct[m])
            stack.extend(self.children[m])
        return out

    def signature(self, module: str) -> tuple:
        """Ops and shapes by relative module path: equal for blocks with the same
        structure (ResNet stages of different widths differ)."""
        sig = self._sig.get(module)
        if sig is None:
            cut = len(module) + 1
            counts = Counter(
                (self.module_of.get(n, "")[cut:], self.ops[n])
                for n in self.nodes(module)
            )
            sig = self._sig[module] = tuple(sorted(counts.items()))
        return sig

    def feeds(self, first: tuple[str, ...], then: tuple[str, ...]) -> bool:
        """Whether a node of block ``then`` reads a node of block ``first``."""
        inside = {n for c in first for n in self.nodes(c)}
        succ = self.succ
        return any(v in inside for c in then for n in self.nodes(c) for v in succ[n])

    def runs(self, module: str, longest: int = 4) -> list[list[tuple[str, ...]]]:
        """Maximal runs (2 or more blocks) of consecutive same-structure children,
        each block feeding the next (stacked layers, not parallel branches); a
        block is ``p`` consecutive children (``p`` up to ``longest``)."""
        kids = self.children[module]
        sigs = [self.signature(k) for k in kids]
        runs, i = [], 0
        while i < len(kids):
            best = (0, 0)
            for p in range(1, longest + 1):
                reps = 1
                while sigs[i + reps * p : i + (reps + 1) * p] == sigs[
                    i : i + p
                ] and self.feeds(
                    tuple(kids[i + (reps - 1) * p : i + reps * p]),
                    tuple(kids[i + reps * p : i + (reps + 1) * p]),
                ):
                    reps += 1
                if reps >= 2 and reps * p > best[0] * best[1]:
                    best = (reps, p)
            reps, p = best
            if reps:
                runs.append(
                    [tuple(kids[i + r * p : i + (r + 1) * p]) for r in range(reps)]
                )
                i += reps * p
            else:
                i += 1
        return runs


class _Plan:
    """Which modules are expanded and how far each run of repeats is unrolled."""

    def __init__(self, tree: _Tree, depth: int | None, keep_leaves: bool):
        self.tree = tree
        self.depth = depth
        self.keep_leaves = keep_leaves
        self.expanded: set[str] = set()
        self.searched: set[str] = set()
        self.runs: list[list[tuple[str, ...]]] = []
        self.run_of: dict[str, tuple[int, int]] = {}  # child -> (run, block)
        self.shown: list[int] = []  # per run: leading blocks drawn one by one

    def level(self, module: str) -> int:
        """Depth of ``module`` counting only modules that are a level of their
        own: not a wrapper of one submodule, not the only submodule of its
        parent, not a list of numbered blocks without ops (``ModuleList``)."""
        tree, level, parent = self.tree, 0, ""
        parts = module.split(".")
        for k in range(1, len(parts) + 1):
            name = ".".join(parts[:k])
            kids = tree.children[name]
            listing = (
                kids
                and not tree.direct[name]
                and all(k.rpartition(".")[2].isdigit() for k in kids)
            )
            if not (len(kids) == 1 or len(tree.children[parent]) == 1 or listing):
                level += 1
            parent = name
        return level

    def expandable(self, module: str) -> bool:
        if self.keep_leaves and not self.tree.children[module]:
            return False
        return self.depth is None or self.level(module) < self.depth

    def expand(self, module: str) -> None:
        self.find_runs(module)
        self.expanded.add(module)

    def find_runs(self, module: str) -> None:
        """Note the runs of repeated children of ``module`` (once)."""
        if module in self.searched:
            return
        self.searched.add(module)
        for run in self.tree.runs(module):
            index = len(self.runs)
            self.runs.append(run)
            self.shown.append(0)
            for b, block in enumerate(run):
                for child in block:
                    self.run_of[child] = (index, b)

    def items(self, module: str) -> int:
        """Boxes an expanded ``module`` adds directly (not counting below)."""
        self.find_runs(module)
        count = len(self.tree.direct[module])
        for child in self.tree.children[module]:
            place = self.run_of.get(child)
            if place is None or place[1] == 0 and child == self.runs[place[0]][0][0]:
                count += 1
        return count

    def rest_boxes(self, run: int) -> int:
        """Boxes for the blocks of ``run`` not yet drawn one by one."""
        left = len(self.runs[run]) - self.shown[run]
        return 0 if left == 0 else len(self.runs[run][-1]) if left == 1 else 1

    def block_size(self, block: tuple[str, ...]) -> int:
        return sum(self.tree.size[c] for c in block)


def _grow(plan: _Plan, budget: float) -> None:
    """Expand boxes biggest first while the total stays within ``budget``."""
    tree = plan.tree
    plan.expand("")
    total = plan.items("")
    first: list = []

    def offer(module: str) -> None:
        for child in tree.children[module]:
            place = plan.run_of.get(child)
            if place is None:
                if plan.expandable(child):
                    heapq.heappush(first, (-tree.size[child], child, "module"))
            elif place[1] == 0 and child == plan.runs[place[0]][0][0]:
                size = plan.block_size(plan.runs[place[0]][0])
                heapq.heappush(first, (-size, child, "peel"))

    offer("")
    while first:
        _, key, what = heapq.heappop(first)
        if what == "module":
            if key in plan.expanded:
                continue
            delta = plan.items(key) - 1
            if total + delta <= budget:
                plan.expand(key)
                total += delta
                offer(key)
            continue
        run = plan.run_of[key][0]  # peel: draw the first block, roll the rest
        blocks = plan.runs[run]
        before = plan.rest_boxes(run)
        plan.shown[run] = 1
        delta = len(blocks[0]) + plan.rest_boxes(run) - before
        if total + delta > budget:
            plan.shown[run] = 0
            continue
        total += delta
        drawn = blocks[:1] + (blocks[-1:] if len(blocks) == 2 else [])
        for child in (c for b in drawn for c in b):
            if plan.expandable(child):
                heapq.heappush(first, (-tree.size[child], child, "module"))


def _groups(graph: GradGraph, plan: _Plan) -> tuple[dict, dict, dict]:
    """Group map, box data and what each box is (for splitting)."""
    tree, dag = plan.tree, graph.dag
    group: dict[int, int] = {}
    boxes: dict[int, dict] = {}
    what: dict[int, tuple] = {}

    def add(nodes: list[int], data: dict, origin: tuple) -> None:
        rep = min(nodes)
        group.update(dict.fromkeys(nodes, rep))
        boxes[rep] = data
        what[rep] = origin

    for module in sorted(plan.expanded, key=_natural):
        cluster = module or None
        for node in tree.direct[module]:
            if cluster is not None:
                boxes[node] = {**dag._node[node], "cluster": cluster}
        for child in tree.children[module]:
            place = plan.run_of.get(child)
            if place is not None and place[1] >= plan.shown[place[0]]:
                run, b = place
                rest = plan.runs[run][plan.shown[run] :]
                if len(rest) > 1:
                    if child == rest[0][0]:
                        nodes = [n for blk in rest for c in blk for n in tree.nodes(c)]
                        add(nodes, _repeat_box(dag, nodes, rest, cluster), ("run", run))
                    continue
            if child in plan.expanded:
                continue
            nodes = tree.nodes(child)
            if len(nodes) == 1:
                boxes[nodes[0]] = {**dag._node[nodes[0]], "cluster": cluster}
            elif nodes:
                items = [(n, dag._node[n]) for n in sorted(nodes)]
                size = len(nodes)
                label = f"{child} · {size:,} nodes"
                box = _box(MODULE, items, label, module=child, cluster=cluster)
                add(nodes, box, ("module", child))
    return group, boxes, what


def _repeat_box(dag, nodes: list[int], blocks: list, cluster: str | None) -> dict:
    """One box for ``blocks`` (each a tuple of sibling modules) of the same
    structure, labelled ``h.1–11 ×11``."""
    name = _span(blocks[0][0], blocks[-1][-1])
    items = [(n, dag._node[n]) for n in sorted(nodes)]
    return _box(
        "module",
        items,
        f"{name} ×{len(blocks)}",
        module=name,
        cluster=cluster,
        repeat=len(blocks),
        blocks=tuple(b[0] if len(b) == 1 else _span(b[0], b[-1]) for b in blocks),
    )


def _span(first: str, last: str) -> str:
    """``h.1–11`` for ``h.1`` … ``h.11`` (``a … b`` when not numbered)."""
    head, _, a = first.rpartition(".")
    head2, _, b = last.rpartition(".")
    if head == head2 and a.isdigit() and b.isdigit():
        return f"{first}–{b}"
    return f"{first} … {last}"


def fold_to_budget(
    graph: GradGraph,
    max_nodes: int | None = None,
    depth: int | None = None,
    keep_leaves: bool = False,
    min_chain: int = 3,
) -> GradGraph:
    """Fold by the module tree into at most ``max_nodes`` boxes (see module doc).

    Args:
        graph: the traced graph (left unchanged).
        max_nodes: the box budget (None: no limit, only ``depth`` folds).
        depth: expand modules down to ``depth`` levels (``depth=1``: the
            top-level modules stay boxes); wrappers of one submodule, only
            children and lists of numbered blocks (``ModuleList``) are not a
            level.
        keep_leaves: never expand a module without submodules.
        min_chain: shortest chain of loose ops folded when over budget.
    """
    tree = _Tree(graph)
    plan = _Plan(tree, depth, keep_leaves)
    _grow(plan, float("inf") if max_nodes is None else max_nodes)
    while True:
        group, boxes, what = _groups(graph, plan)
        small = _quotient(graph, group, boxes)
        cyclic = [c for c in nx.strongly_connected_components(small.dag) if len(c) > 1]
        if not cyclic:
            break
        for box in sorted(b for c in cyclic for b in c if b in what):
            kind, key = what[box]
            if kind == "module":
                plan.expand(key)
            else:
                plan.shown[key] = len(plan.runs[key])
    if max_nodes is not None and len(small) > max_nodes:
        fitted = _fit_chains(small, max_nodes, min_chain)
        small = fitted if fitted is not None else small
        if len(small) > max_nodes:
            small = fold_levels(small, max_nodes)
    return small


def fold_levels(graph: GradGraph, max_nodes: int) -> GradGraph:
    """Merge nodes into bands of consecutive depth levels (longest path from a
    root), at most ``max_nodes`` bands; edges only go from a band to a later one,
    so the result is a DAG."""
    dag = graph.dag
    level: dict[int, int] = {}
    for node in reversed(list(nx.topological_sort(dag))):
        level[node] = 0
    for node in nx.topological_sort(dag):
        here = level[node]
        for child in dag._succ[node]:
            if level[child] < here + 1:
                level[child] = here + 1
    levels = max(level.values()) + 1
    width = -(-levels // max_nodes)
    bands: dict[int, list[int]] = {}
    for node, k in level.items():
        bands.setdefault(k // width, []).append(node)
    group: dict[int, int] = {}
    boxes: dict[int, dict] = {}
    for band, nodes in sorted(bands.items()):
        if len(nodes) < 2:
            continue
        nodes.sort()
        items = [(n, dag._node[n]) for n in nodes]
        first, last = band * width, min(levels, band * width + width) - 1
        label = f"depth {first}–{last} · {len(nodes):,} nodes"
        boxes[nodes[0]] = _box(MORE, items, label, cluster=None)
        group.update(dict.fromkeys(nodes, nodes[0]))
    return _quotient(graph, group, boxes)
