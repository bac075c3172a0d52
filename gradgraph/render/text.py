"""A plain-text listing of a GradGraph that reads like code; needs no graphviz.

Each line defines one node from its inputs, inputs first::

    n3 = AccumulateGrad()                : float32[3]    w2.bias

Example:
    >>> import torch
    >>> from gradgraph import trace
    >>> x = torch.ones(2, requires_grad=True)
    >>> print(to_text(trace((x * 3).sum(), names={x: "x"})))
    n2 = AccumulateGrad()  : float32[2]  x
    n1 = MulBackward0(n2)  : float32[2]
    n0 = SumBackward0(n1)  : float32[]   (root)
"""

from __future__ import annotations

from ..graph import GradGraph, inputs_first


def shape_text(dtype: str | None, shape: tuple | None) -> str:
    """``float32[3,3]``; ``?`` when unknown."""
    if shape is None:
        return "?"
    return f"{dtype or ''}[{','.join(map(str, shape))}]"


def to_text(graph: GradGraph) -> str:
    """One line per node, inputs first, in a form fit for a bug report.

    After the shape come the node's name, ``@module`` (see
    :func:`gradgraph.record_modules`), ``[order k]`` (derivative order) and
    ``(root)`` for traced outputs, when known.
    """
    dag = graph.dag
    rows = []
    for node in inputs_first(graph):
        data = dag.nodes[node]
        nexts = [v for v, e in dag._succ[node].items() if "input_nr" in e]
        args = ", ".join(
            f"n{v}" for v in sorted(nexts, key=lambda v: dag.edges[node, v]["input_nr"])
        )
        notes = [data["name"]] if data["name"] else []
        if data.get("module"):
            notes.append(f"@{data['module']}")
        if data.get("order") is not None:
            notes.append(f"[order {data['order']}]")
        if node in graph.roots:
            notes.append("(root)")
        rows.append(
            (
                f"n{node} = {data['op']}({args})",
                shape_text(data["dtype"], data["shape"]),
                "  ".join(notes),
            )
        )
    left = max(len(r[0]) for r in rows)
    mid = max(len(r[1]) for r in rows)
    return "\n".join(f"{a:<{left}}  : {b:<{mid}}  {c}".rstrip() for a, b, c in rows)
