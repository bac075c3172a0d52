"""trace(): walk ``grad_fn.next_functions`` into a :class:`GradGraph`.

The walk is iterative (an explicit stack, so a million-node chain is fine),
visits each autograd node once, and numbers nodes as it discovers them: roots
first, then each node's next functions in order, depth first. The same program
gives the same ids, the same DOT text and the same SVG bytes on every run.
An edge ``u -> v`` means ``v`` is in ``u.next_functions``; its ``input_nr`` is
the position there and ``output_nr`` which output of ``v`` the gradient flows
into.

Example:
    >>> import torch
    >>> lin = torch.nn.Linear(3, 3)
    >>> g = trace(lin(torch.ones(1, 3)), model=lin)
    >>> [g.dag.nodes[n]["op"] for n in g.dag.successors(g.roots[0])]
    ['AccumulateGrad', 'TBackward0']
    >>> g.dag.nodes[1]["name"]
    'bias'
"""

from __future__ import annotations

import gc
import json
from collections import Counter
from collections.abc import Iterable, Mapping
from contextlib import contextmanager
from typing import Any

import networkx as nx
import torch

from .naming import Names, collect_names
from .nodes import ACCUMULATE, ROOT, node_facts
from .release import guard_deep_free

__all__ = ["GradGraph", "trace"]


class GradGraph:
    """An autograd graph as plain data around a ``networkx.DiGraph``.

    Attributes:
        dag: the graph; node ids are ints in walk order, node attributes are
            documented in :func:`gradgraph.nodes.node_facts`.
        roots: node ids of the traced outputs, in the order given.
        outputs: one dict per traced output: ``node``, ``name``, ``shape``.
    """

    def __init__(
        self,
        dag: nx.DiGraph,
        roots: list[int],
        outputs: list[dict],
        fns: list | None = None,
    ):
        self.dag = dag
        self.roots = roots
        self.outputs = outputs
        self._fns = fns

    # -- queries -----------------------------------------------------------
    @property
    def leaves(self) -> list[int]:
        """Nodes with no next functions (AccumulateGrad of leaf tensors, mostly)."""
        return [n for n, d in self.dag.out_degree() if d == 0]

    def __len__(self) -> int:
        return self.dag.number_of_nodes()

    def __repr__(self) -> str:
        return (
            f"GradGraph({self.dag.number_of_nodes()} nodes, "
            f"{self.dag.number_of_edges()} edges, roots={self.roots})"
        )

    def grad_fn(self, node: int) -> Any:
        """The live autograd node behind ``node`` (needs ``trace(..., keep=True)``)."""
        if self._fns is None:
            raise ValueError(
                "this GradGraph holds no grad_fn objects; trace with keep=True to get "
                "them (it keeps the graph's memory alive while the GradGraph lives)."
            )
        if node not in self.dag:
            raise ValueError(
                f"node {node!r} is not in this graph (0..{len(self) - 1})."
            )
        return self._fns[node]

    def nodes_by_op(self, op: str) -> list[int]:
        """Ids of the nodes whose op is ``op`` (e.g. ``"AddmmBackward0"``)."""
        return [n for n, o in self.dag.nodes(data="op") if o == op]

    def summary(self) -> dict:
        """Counts by op, kind and derivative order, and saved-tensor bytes:
        ``saved_bytes`` adds up every saved tensor, ``saved_memory`` counts each
        storage once and leaves parameters out (:meth:`saved_memory`)."""
        nodes = self.dag.nodes
        saved = [s for n in nodes for s in nodes[n]["saved"]]
        return {
            "nodes": self.dag.number_of_nodes(),
            "edges": self.dag.number_of_edges(),
            "by_op": dict(sorted(Counter(o for _, o in nodes(data="op")).items())),
            "by_kind": dict(sorted(Counter(k for _, k in nodes(data="kind")).items())),
            "by_order": _count_orders(self.dag),
            "saved_tensors": len(saved),
            "saved_bytes": sum(s.get("nbytes", 0) for s in saved if not s["freed"]),
            "saved_memory": self.saved_memory(),
            "freed_tensors": sum(1 for s in saved if s["freed"]),
        }

    def saved_memory(self, by: str | None = None) -> int | dict:
        """Activation memory: bytes saved for backward, each storage once,
        parameters excluded; a dict by ``"op"``, ``"module"`` or ``"node"``
        (see :func:`gradgraph.memory.saved_memory`)."""
        from .memory import saved_memory

        return saved_memory(self, by)

    def diff(self, other: GradGraph) -> Any:
        """What ``other`` adds, drops and frees: :func:`gradgraph.diff.diff_graphs`."""
        from .diff import diff_graphs

        return diff_graphs(self, other)

    # -- output forms --------------------------------------------------------
    def to_dot(self, **options: Any) -> str:
        """DOT text (deterministic); options as in :func:`render.dot.to_dot`."""
        from .render.dot import to_dot

        return to_dot(self, **options)

    def render(self, path: str, format: str | None = None, **options: Any) -> str:
        """Write the picture to ``path`` (needs the graphviz ``dot`` binary).

        The suffix sets the format (``g.png`` is a PNG); folded to 200 boxes
        unless ``max_nodes=`` says otherwise (None: everything); options as in
        :func:`render.dot.render`.
        """
        from .render.dot import render

        return render(self, path, format, **options)

    def to_svg(self, **options: Any) -> str:
        """The picture as SVG text (needs the graphviz ``dot`` binary), folded
        to 200 boxes by default; options as in :func:`render.dot.to_svg`."""
        from .render.dot import to_svg

        return to_svg(self, **options)

    def to_text(self, **options: Any) -> str:
        """A listing that reads like code; needs no graphviz."""
        from .render.text import to_text

        return to_text(self, **options)

    def to_json(self) -> str:
        """networkx node-link JSON of the DAG plus the roots."""
        data = nx.node_link_data(self.dag, edges="edges")
        data["graph"] = {"roots": self.roots, "outputs": self.outputs}
        return json.dumps(data, sort_keys=True, default=_jsonable)

    def to_html(self, path: str | None = None, **options: Any) -> str:
        """One self-contained interactive page (SVG, pan/zoom, search, details).

        Writes it to ``path`` when given; returns the HTML text. Options as in
        :func:`render.html.to_html`.
        """
        from .render.html import to_html

        return to_html(self, path, **options)

    def _repr_svg_(self) -> str:
        from .render.html import NOTEBOOK_MAX_NODES  # the budget of _repr_html_

        return self.to_svg(max_nodes=NOTEBOOK_MAX_NODES)

    def _repr_html_(self) -> str:
        from .render.html import notebook_html

        return notebook_html(self)


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def _count_orders(dag: nx.DiGraph) -> dict:
    counts = Counter(o for _, o in dag.nodes(data="order") if o is not None)
    return dict(sorted(counts.items()))


# -- trace ------------------------------------------------------------------


def _flatten_outputs(outputs: tuple) -> list[tuple[str | None, torch.Tensor]]:
    """(name, tensor) pairs from tensors and tuples/lists/dicts of them."""
    flat: list[tuple[str | None, torch.Tensor]] = []
    stack: list[tuple[str | None, Any]] = [(None, o) for o in reversed(outputs)]
    while stack:
        name, item = stack.pop()
        if isinstance(item, torch.Tensor):
            flat.append((name, item))
        elif isinstance(item, Mapping):
            stack.extend((str(k), v) for k, v in reversed(list(item.items())))
        elif isinstance(item, (list, tuple)):
            stack.extend((name, v) for v in reversed(item))
        else:
            raise TypeError(
                f"trace() takes tensors (or tuples, lists and dicts of them), got "
                f"{type(item).__name__}; pass the output tensor, e.g. trace(loss)."
            )
    if not flat:
        raise ValueError(
            "trace() got no tensors; pass at least one output, e.g. trace(loss)."
        )
    return flat


def _root_node(tensor: torch.Tensor, name: str | None) -> Any:
    """The autograd node a tensor's gradient enters: its grad_fn or AccumulateGrad."""
    if tensor.grad_fn is not None:
        return tensor.grad_fn
    if tensor.requires_grad:
        return torch.autograd.graph.get_gradient_edge(tensor).node
    what = f"output {name!r}" if name else "the tensor"
    raise ValueError(
        f"{what} has no grad_fn and does not require grad, so it has no autograd "
        "graph. Make sure it is computed from tensors with requires_grad=True, "
        "outside torch.no_grad() and not .detach()ed."
    )


def _walk(
    root_fns: list, owners: dict | None, names: dict | None
) -> tuple[list, dict, dict, dict, dict]:
    """One depth-first pass that numbers nodes, reads their facts and links them.

    A node gets its id when first discovered (roots first, then each node's
    next functions in ``input_nr`` order), so ids are deterministic and a node's
    inputs have consecutive ids. Returns the grad_fn list (index = id), the
    fn -> id index, and networkx's three dicts (node attrs, successors,
    predecessors) ready to be installed by :func:`_build_dag`.
    """
    index: dict[Any, int] = {}
    fns: list = []
    nodes: dict[int, Any] = {}
    storages: dict[int, int] = {}  # storage address -> id, shared by all nodes
    succ: dict[int, dict] = {}
    pred: dict[int, dict] = {}
    for fn in root_fns:
        if fn not in index:
            v = index[fn] = len(fns)
            fns.append(fn)
            nodes[v], succ[v], pred[v] = None, {}, {}
    stack = list(range(len(fns) - 1, -1, -1))  # each node is pushed exactly once
    while stack:
        u = stack.pop()
        fn = fns[u]
        nodes[u] = node_facts(fn, owners, names, storages)
        su = succ[u]
        new = []
        for pos, (child, out_nr) in enumerate(fn.next_functions):
            if child is None:
                continue
            v = index.get(child)
            if v is None:
                v = index[child] = len(fns)
                fns.append(child)
                nodes[v], succ[v], pred[v] = None, {}, {}
                new.append(v)
            data = su.get(v)
            if data is None:
                su[v] = pred[v][u] = {"input_nr": pos, "output_nr": out_nr}
            else:  # the same node feeds u twice, e.g. x * x
                data["multiplicity"] = data.get("multiplicity", 1) + 1
        stack.extend(reversed(new))
    return fns, index, nodes, succ, pred


def _apply_strict_names(fns: list, index: dict, names: Names, attrs: dict) -> None:
    """Check and finish the names given through ``names=``.

    :func:`node_facts` already named the AccumulateGrad nodes; here a named leaf
    is marked as an ``input`` and a named intermediate names its grad_fn node.
    """
    leaves = None  # id(variable) -> AccumulateGrad node, built once if needed
    for key in names.strict:
        tensor = names.tensors[key]
        if tensor.grad_fn is not None:
            node = index.get(tensor.grad_fn)
        elif tensor.requires_grad:
            if leaves is None:
                leaves = {
                    id(fn.variable): n
                    for n, fn in enumerate(fns)
                    if attrs[n]["kind"] == ACCUMULATE
                }
            node = leaves.get(key)
        else:
            node = None
        if node is None:
            raise ValueError(
                f"names= gives {names.by_id[key]!r} to a tensor that is not in the "
                "traced graph; name only tensors the outputs depend on."
            )
        if tensor.grad_fn is None:
            attrs[node]["input"] = True
        elif attrs[node]["name"] is None:
            attrs[node]["name"] = names.by_id[key]


def trace(
    *outputs: Any,
    model: torch.nn.Module | None = None,
    params: Mapping | Iterable | None = None,
    names: Mapping | None = None,
    keep: bool = False,
    modules: Any = None,
) -> GradGraph:
    """Trace the autograd graph behind ``outputs`` into a :class:`GradGraph`.

    Args:
        *outputs: tensors, or tuples/lists/dicts of tensors (dict keys name the
            outputs). Several outputs give one DAG with several roots.
        model: a Module whose ``named_parameters()`` name the AccumulateGrad nodes.
        params: more names: ``{"w1": w1_module, "x": x_tensor}`` or a list.
        names: ``{tensor: "x"}`` (or ``{"x": tensor}``) for inputs and
            intermediate values; each must be in the graph.
        keep: keep the grad_fn objects so ``GradGraph.grad_fn(node)`` works
            (this keeps the graph's saved tensors alive).
        modules: a record from :func:`gradgraph.record_modules`; nodes created
            inside a submodule's forward get its name as ``module``.

    Works on graphs whose buffers ``backward()`` already freed: saved tensors are
    then marked ``freed``. Never changes the graph's structure, hooks or saved
    tensors; on graphs of 1,000 nodes or more each output's grad_fn keeps its
    nodes in a safe release order (see :mod:`gradgraph.release`), so deleting a
    deep graph after the trace cannot overflow the C stack.

    Example:
        >>> import torch
        >>> x = torch.tensor(2.0, requires_grad=True)
        >>> g = trace(x ** 4, names={x: "x"})
        >>> [d["op"] for _, d in sorted(g.dag.nodes(data=True))]
        ['PowBackward0', 'AccumulateGrad']
    """
    if not isinstance(keep, bool):
        raise TypeError(f"keep= must be True or False, got {type(keep).__name__}.")
    flat = _flatten_outputs(outputs)
    user_names = collect_names(model=model, params=params, names=names)
    root_fns = [_root_node(t, name) for name, t in flat]
    with _gc_paused():
        owners = user_names.storage_owners() if user_names.tensors else None
        fns, index, nodes, succ, pred = _walk(root_fns, owners, user_names.by_id)
        _apply_strict_names(fns, index, user_names, nodes)
        if modules is not None:
            _apply_modules(fns, nodes, modules)
        roots, outputs_info = _mark_roots(flat, root_fns, index, nodes)
        dag = _build_dag(nodes, succ, pred)
        guard_deep_free(fns, dag._succ, roots)
    return GradGraph(dag, roots, outputs_info, fns if keep else None)


def _apply_modules(fns: list, nodes: dict, modules: Any) -> None:
    """``module`` on each node that ``modules`` (a ModuleRecord) knows."""
    for node, fn in enumerate(fns):
        name = modules.module(fn)
        if name is not None:
            nodes[node]["module"] = name


def _mark_roots(flat: list, root_fns: list, index: dict, attrs: dict):
    roots: list[int] = []
    outputs_info = []
    for (name, tensor), fn in zip(flat, root_fns, strict=True):
        node = index[fn]
        if node not in roots:
            roots.append(node)
        if attrs[node]["kind"] != ACCUMULATE:
            attrs[node]["kind"] = ROOT
        if name is not None and attrs[node]["name"] is None:
            attrs[node]["name"] = name
        outputs_info.append({"node": node, "name": name, "shape": tuple(tensor.shape)})
    return roots, outputs_info


@contextmanager
def _gc_paused():
    """Pause the cyclic garbage collector while a trace allocates its dicts.

    The walk creates millions of small containers and collects none of them, so
    generational passes only cost time (3-4x on a 100k-node graph). The
    collector's previous state is restored, even on error.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _build_dag(nodes: dict, succ: dict, pred: dict) -> nx.DiGraph:
    """A DiGraph made from its three dicts in bulk.

    networkx stores a DiGraph as dicts (``_node``, ``_succ`` = ``_adj``,
    ``_pred``) with one data dict shared by an edge's two directions. Installing
    dicts built by the walk skips the per-item checks and copies of
    ``add_nodes_from``/``add_edges_from`` and gives the same graph.
    """
    dag = nx.DiGraph()
    dag._node.update(nodes)
    dag._succ.update(succ)
    dag._pred.update(pred)
    return dag


def inputs_first(graph: GradGraph) -> list[int]:
    """Every node after all of its inputs (next functions): a post-order DFS.

    Deterministic: inputs are visited in ``input_nr`` order, roots in trace order,
    so the listing reads like a program that builds the outputs.
    """
    dag = graph.dag
    order: list[int] = []
    done: set[int] = set()
    for root in graph.roots + sorted(n for n, d in dag.in_degree() if d == 0):
        if root in done:
            continue
        stack = [(root, iter(dag.successors(root)))]
        done.add(root)
        while stack:
            node, children = stack[-1]
            for child in children:
                if child not in done:
                    done.add(child)
                    stack.append((child, iter(dag.successors(child))))
                    break
            else:
                stack.pop()
                order.append(node)
    return order
