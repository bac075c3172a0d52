"""record_backward(): the order backward really ran, and the gradients that flowed.

Every node of the traced graph gets a pre-hook (called just before the engine
runs the node, with the gradients arriving at it) and a post-hook (called
just after, with the gradients it sends on). The record maps everything onto
the node ids of ``record.graph``: which nodes ran, in which order, how many
times (two backwards with ``retain_graph=True`` -> twice), the shape and norm
of each gradient, and for AccumulateGrad nodes the leaf's ``.grad`` after the
node added to it (the gradient accumulation of the seed's section 3). The
hooks hold no tensors (norms are taken at once) and are all removed when the
recording ends, even on error.

Example:
    >>> import torch
    >>> x = torch.ones(3, requires_grad=True)
    >>> y = (x * 2).sum()
    >>> rec = record_backward(y, names={x: "x"}, times=2, retain_graph=True)
    >>> [rec.graph.dag.nodes[n]["op"] for n in rec.calls[0].order]
    ['SumBackward0', 'MulBackward0', 'AccumulateGrad']
    >>> rec.counts()[0], [round(n, 3) for n in rec.accumulated()[2]]
    (2, [3.464, 6.928])
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from .graph import GradGraph, _flatten_outputs, trace
from .nodes import ACCUMULATE
from .retain import SECOND_BACKWARD, explain_retain_graph, freed_buffers

__all__ = [
    "BackwardCall",
    "BackwardRecord",
    "GradFlow",
    "record_backward",
    "recording",
]

_graph_task_id = getattr(torch._C, "_current_graph_task_id", lambda: 0)


@dataclass(frozen=True)
class GradFlow:
    """One gradient as plain data: its shape and 2-norm (None when undefined);
    for gradients arriving at a leaf also the mean and max of its absolute
    values."""

    shape: tuple[int, ...] | None
    norm: float | None
    mean_abs: float | None = None
    max_abs: float | None = None

    @classmethod
    def of(cls, grad: torch.Tensor | None, stats: bool = False) -> GradFlow:
        if grad is None:
            return cls(None, None)
        values = grad.detach()
        if values.is_sparse:  # sparse=True embeddings: the norm of the stored values
            values = values.coalesce().values()
        elif values.layout != torch.strided:
            values = values.values()
        with torch.no_grad():
            g = values.double()
            norm = torch.linalg.vector_norm(g).item()
            if not stats or not g.numel():
                return cls(tuple(grad.shape), norm)
            size = g.abs()
            mean, top = size.mean().item(), size.max().item()
        return cls(tuple(grad.shape), norm, mean, top)


@dataclass
class BackwardCall:
    """What one backward call (one autograd graph task) did on the graph.

    Attributes:
        order: nodes in the order they started (pre-hooks).
        finished: nodes in the order they finished (post-hooks).
        incoming: node -> the gradients that arrived at it, one per output of
            its forward op.
        outgoing: node -> the gradients it sent, one per next function (in
            ``input_nr`` order).
        accumulated: AccumulateGrad node -> the leaf's ``.grad`` right after the
            node added to it.
    """

    order: list[int] = field(default_factory=list)
    finished: list[int] = field(default_factory=list)
    incoming: dict[int, tuple[GradFlow, ...]] = field(default_factory=dict)
    outgoing: dict[int, tuple[GradFlow, ...]] = field(default_factory=dict)
    accumulated: dict[int, GradFlow] = field(default_factory=dict)


@dataclass
class BackwardRecord:
    """Backward calls recorded on ``graph``, mapped onto its node ids."""

    graph: GradGraph
    calls: list[BackwardCall] = field(default_factory=list)
    _task: Any = field(default=None, repr=False)

    def counts(self) -> dict[int, int]:
        """Node -> how many times it ran, over all calls (0 if never)."""
        counts = dict.fromkeys(self.graph.dag, 0)
        for call in self.calls:
            for node in call.order:
                counts[node] += 1
        return counts

    def accumulated(self) -> dict[int, list[float | None]]:
        """AccumulateGrad node -> norm of the leaf's ``.grad`` after each call
        that ran the node (``.grad`` as the node left it, before any later
        ``zero_()``)."""
        out: dict[int, list[float | None]] = {}
        for call in self.calls:
            for node, flow in call.accumulated.items():
                out.setdefault(node, []).append(flow.norm)
        return out

    def annotated(self) -> GradGraph:
        """A copy of the graph whose nodes carry ``runs`` (how many times the node
        ran), ``step`` (its position in the first call that ran it) and
        ``grad_norm`` (norm of the first gradient that last arrived at it)."""
        dag = self.graph.dag.copy()
        counts = self.counts()
        for node, data in dag.nodes(data=True):
            data["runs"] = counts[node]
            data["step"] = None
            data["grad_norm"] = None
        for call in reversed(self.calls):
            for step, node in enumerate(call.order):
                dag.nodes[node]["step"] = step
        for call in self.calls:
            for node, flows in call.incoming.items():
                dag.nodes[node]["grad_norm"] = flows[0].norm if flows else None
        return GradGraph(dag, list(self.graph.roots), list(self.graph.outputs))

    def is_topological(self) -> bool:
        """Whether every call ran each node before its next functions."""
        dag = self.graph.dag
        for call in self.calls:
            position = {n: i for i, n in enumerate(call.order)}
            for u, v, data in dag.edges(data=True):
                if "input_nr" in data and u in position and v in position:
                    if position[u] > position[v]:
                        return False
        return True

    # -- hook bodies ---------------------------------------------------------
    def _call(self) -> BackwardCall:
        task = _graph_task_id()
        if self._task != task or not self.calls:
            self._task = task
            self.calls.append(BackwardCall())
        return self.calls[-1]

    def _before(self, node: int, grads: Sequence, leaf: bool = False) -> None:
        call = self._call()
        call.order.append(node)
        call.incoming[node] = tuple(GradFlow.of(g, stats=leaf) for g in grads)

    def _after(self, node: int, grads: Sequence, leaf: torch.Tensor | None) -> None:
        call = self._call()
        call.finished.append(node)
        call.outgoing[node] = tuple(GradFlow.of(g) for g in grads)
        if leaf is not None:
            call.accumulated[node] = GradFlow.of(leaf.grad)


def _check_not_freed(graph: GradGraph) -> None:
    if freed_buffers(graph):
        raise ValueError(
            "cannot record a backward on this graph: it was already freed.\n"
            + explain_retain_graph(graph)
        )


def _hooks(record: BackwardRecord, node: int, fn: Any) -> tuple:
    leaf = fn.variable if record.graph.dag.nodes[node]["kind"] == ACCUMULATE else None

    def before(grad_outputs):
        record._before(node, grad_outputs, leaf is not None)

    def after(grad_inputs, grad_outputs):
        record._after(node, grad_inputs, leaf)

    return before, after


@contextmanager
def recording(
    *outputs: Any,
    model: torch.nn.Module | None = None,
    params: Mapping | Any = None,
    names: Mapping | None = None,
    modules: Any = None,
) -> Iterator[BackwardRecord]:
    """Record every backward through ``outputs``' graph run inside the block.

    Hooks every node of ``trace(*outputs)``; each backward call (each autograd
    graph task) becomes one :class:`BackwardCall`. The hooks are removed when
    the block ends, even when it raises.

    Args:
        *outputs: the tensors whose graph to watch, as for :func:`trace`.
        model, params, names: node names, as for :func:`trace`.
        modules: a record from :func:`gradgraph.record_modules`, as for
            :func:`trace`.

    Raises:
        ValueError: when a backward already freed the graph's saved tensors.

    Example:
        >>> import torch
        >>> x = torch.ones(2, requires_grad=True)
        >>> y = (x * x).sum()
        >>> with recording(y) as rec:
        ...     y.backward(retain_graph=True)
        ...     y.backward()
        >>> len(rec.calls), rec.counts()
        (2, {0: 2, 1: 2, 2: 2})
    """
    graph = trace(
        *outputs, model=model, params=params, names=names, modules=modules, keep=True
    )
    fns, graph._fns = graph._fns, None
    _check_not_freed(graph)
    record = BackwardRecord(graph)
    handles = []
    try:
        for node, fn in enumerate(fns):
            before, after = _hooks(record, node, fn)
            handles.append(fn.register_prehook(before))
            handles.append(fn.register_hook(after))
        del fns
        yield record
    finally:
        for handle in handles:
            handle.remove()


def record_backward(
    *outputs: Any,
    grad_tensors: Any = None,
    retain_graph: bool = False,
    times: int = 1,
    model: torch.nn.Module | None = None,
    params: Mapping | Any = None,
    names: Mapping | None = None,
    modules: Any = None,
) -> BackwardRecord:
    """Run ``torch.autograd.backward(outputs)`` ``times`` times and record it.

    Gradients accumulate into the leaves' ``.grad`` exactly as with a plain
    ``backward()``.

    Args:
        *outputs: tensors to backward from (as for :func:`trace`).
        grad_tensors: gradients w.r.t. the outputs (needed for non-scalars),
            as for ``torch.autograd.backward``.
        retain_graph: keep the saved tensors after each call; needed for
            ``times > 1``.
        times: how many backward calls to run.
        model, params, names, modules: node names and modules, as for
            :func:`trace`.

    Returns:
        A :class:`BackwardRecord` with one :class:`BackwardCall` per call.

    Raises:
        ValueError: the graph is already freed, or ``times > 1`` without
            ``retain_graph=True``.
    """
    if isinstance(times, bool) or not isinstance(times, int) or times < 1:
        raise ValueError(f"times must be an int >= 1, got {times!r}.")
    if times > 1 and not retain_graph:
        raise ValueError(
            f"times={times} needs retain_graph=True: a backward without it frees "
            "the graph's saved tensors and the next one would fail."
        )
    tensors = [t for _, t in _flatten_outputs(outputs)]
    with recording(
        *outputs, model=model, params=params, names=names, modules=modules
    ) as record:
        for _ in range(times):
            try:
                torch.autograd.backward(
                    tensors, grad_tensors=grad_tensors, retain_graph=retain_graph
                )
            except RuntimeError as exc:
                if SECOND_BACKWARD not in str(exc):
                    raise
                raise ValueError(explain_retain_graph(outputs)) from exc
    return record
