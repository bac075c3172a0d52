"""retain_graph: what a backward frees, and why a second one fails.

A backward without ``retain_graph=True`` releases every tensor the nodes it ran
saved for backward (``_raw_saved_*``). The graph's structure stays (so
``trace()`` still works and shows them ``freed``), but a second backward
through those nodes raises "Trying to backward through the graph a second
time". :func:`explain_retain_graph` says which nodes' buffers are gone (or
would go) for a given graph.

Example:
    >>> import torch
    >>> from gradgraph import trace
    >>> x = torch.ones(3, requires_grad=True)
    >>> y = x.exp().sum()
    >>> _ = y.backward()
    >>> freed_buffers(trace(y))
    {1: ('result',)}
"""

from __future__ import annotations

from typing import Any

from .graph import GradGraph, trace

__all__ = [
    "explain_retain_graph",
    "freed_buffers",
    "modified_buffers",
    "saved_buffers",
]

SECOND_BACKWARD = "Trying to backward through the graph a second time"
MODIFIED_IN_PLACE = "modified by an inplace operation"


def _buffers(graph: GradGraph, freed: bool) -> dict[int, tuple[str, ...]]:
    out = {}
    for node, saved in graph.dag.nodes(data="saved"):
        attrs = tuple(s["attr"] for s in saved if s["freed"] is freed)
        if attrs:
            out[node] = attrs
    return out


def freed_buffers(graph: GradGraph) -> dict[int, tuple[str, ...]]:
    """Node -> names of its saved tensors that a backward already freed."""
    return _buffers(graph, freed=True)


def saved_buffers(graph: GradGraph) -> dict[int, tuple[str, ...]]:
    """Node -> names of its saved tensors that are still there."""
    return _buffers(graph, freed=False)


def modified_buffers(graph: GradGraph) -> dict[int, tuple[str, ...]]:
    """Node -> saved tensors changed in place since they were saved.

    Needs the live nodes (``trace(..., keep=True)``); a graph without them
    gives ``{}``. Values packed by ``saved_tensors_hooks`` are not unpacked.
    """
    if graph._fns is None:
        return {}
    found = {}
    for node, saved in graph.dag.nodes(data="saved"):
        fn, changed = graph.grad_fn(node), []
        for fact in saved:
            if fact["freed"] or "packed" in fact:
                continue
            try:  # unpacking checks the version counter against the saved one
                getattr(fn, f"_saved_{fact['attr']}")
            except RuntimeError as exc:
                if MODIFIED_IN_PLACE in str(exc):
                    changed.append(fact["attr"])
            except AttributeError:
                continue
        if changed:
            found[node] = tuple(changed)
    return found


def _listing(graph: GradGraph, buffers: dict[int, tuple[str, ...]]) -> str:
    nodes = graph.dag.nodes
    return "\n".join(
        f"  n{n} {nodes[n]['op']}: {', '.join(attrs)}"
        for n, attrs in sorted(buffers.items())
    )


def explain_retain_graph(graph_or_outputs: Any) -> str:
    """Explain, for this graph, the "backward through the graph a second time" error.

    Args:
        graph_or_outputs: a GradGraph, or the outputs to trace (a tensor or a
            tuple/list/dict of them).

    Returns:
        Which nodes' saved tensors a backward already freed and what to do, or,
        when nothing is freed yet, which ones a backward without
        ``retain_graph=True`` would free.

    Example:
        >>> import torch
        >>> x = torch.ones(2, requires_grad=True)
        >>> print(explain_retain_graph((x * x).sum()).splitlines()[0])
        No saved tensor of this graph is freed yet: backward can run through it.
    """
    graph = (
        graph_or_outputs
        if isinstance(graph_or_outputs, GradGraph)
        else trace(graph_or_outputs, keep=True)
    )
    modified = modified_buffers(graph)
    if modified:
        return (
            f"Backward cannot run through this graph: tensors saved by "
            f"{len(modified)} of its {len(graph)} nodes were changed in place "
            f"after the forward pass (e.g. by optimizer.step()):\n"
            f"{_listing(graph, modified)}\n"
            f"A backward raises 'one of the variables needed for gradient "
            "computation has been modified by an inplace operation'. Recompute "
            "the forward pass after the change, or change a copy (x = x.clone())."
        )
    freed = freed_buffers(graph)
    if freed:
        return (
            f"A backward without retain_graph=True already ran through this graph "
            f"and freed the saved tensors of {len(freed)} of its {len(graph)} "
            f"nodes:\n{_listing(graph, freed)}\n"
            f"Another backward through them raises '{SECOND_BACKWARD}'. Recompute "
            "the forward pass, or pass retain_graph=True to every backward but "
            "the last."
        )
    saved = saved_buffers(graph)
    if not saved:
        return (
            "No saved tensor of this graph is freed yet: backward can run through "
            "it.\nIts nodes save no tensors, so backward can run through it any "
            "number of times even without retain_graph=True."
        )
    return (
        "No saved tensor of this graph is freed yet: backward can run through "
        f"it.\nA backward without retain_graph=True will free the saved tensors "
        f"of {len(saved)} of its {len(graph)} nodes:\n{_listing(graph, saved)}\n"
        f"and a second backward would then raise '{SECOND_BACKWARD}'."
    )
