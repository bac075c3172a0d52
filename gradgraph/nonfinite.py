"""find_nonfinite(): the node where inf/NaN first enters the gradients.

A NaN in one gradient spreads to every gradient computed from it, so by the
time a parameter's ``.grad`` holds NaN, hundreds of nodes do. What a person
debugging wants is the one node that *made* it: the first node in backward
order whose outgoing gradients hold inf/NaN while every gradient it received
was finite (``sqrt`` of a ReLU output that is 0, ``log`` of 0, a division by
0...). :func:`find_nonfinite` runs the backward under
:func:`gradgraph.recording` (one norm per gradient, no tracebacks), finds that
node and says where it is: op, node id, the module that created it (with
``modules=``), the forward source line (when the forward ran in anomaly
mode), the path from the loss, and a picture with both highlighted.

``torch.autograd.detect_anomaly()`` finds the same node only if the forward
already ran under it (it stores a traceback for every op) and then checks every
node's outputs as the backward runs, raising at the first NaN (inf passes
silently). This needs neither: the forward runs as usual.

Example:
    >>> import torch
    >>> x = torch.tensor([-1.0, 4.0], requires_grad=True)
    >>> loss = torch.relu(x).sqrt().sum()  # sqrt(0) has an infinite slope
    >>> found = find_nonfinite(loss, names={x: "x"})
    >>> found.op, found.path_ops
    ('SqrtBackward0', ['SumBackward0', 'SqrtBackward0'])
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import networkx as nx
import torch

from .graph import GradGraph, trace
from .nodes import ACCUMULATE
from .recorder import BackwardRecord, GradFlow, record_backward

__all__ = ["NonFiniteReport", "find_nonfinite"]

# why an op's backward typically makes inf/NaN from finite gradients
_CAUSES = {
    "Sqrt": "sqrt(x) has slope 1/(2 sqrt(x)), infinite at x = 0 (e.g. a ReLU "
    "output); use sqrt(x + eps) or x.clamp_min(eps).sqrt()",
    "Rsqrt": "rsqrt(x) has slope -x^-1.5/2, infinite at x = 0; add an eps",
    "Log": "log(x) has slope 1/x, infinite at x = 0; use log(x + eps) or "
    "log_softmax instead of log(softmax)",
    "Div": "a division by (nearly) zero; clamp the denominator away from 0",
    "Pow": "x ** p with p < 1 has an infinite slope at x = 0; add an eps",
    "LinalgVectorNorm": "the norm of a zero vector has no gradient (0/0); add an "
    "eps inside, e.g. (x.pow(2).sum() + eps).sqrt()",
    "Norm": "the norm of a zero vector has no gradient (0/0); add an eps",
    "Acos": "acos has an infinite slope at ±1; clamp the input to (-1+eps, 1-eps)",
    "Asin": "asin has an infinite slope at ±1; clamp the input to (-1+eps, 1-eps)",
    "Atan2": "atan2(0, 0) has no gradient; keep the point away from the origin",
    "Exp": "exp overflowed; subtract the max first (logsumexp, softmax)",
    "Reciprocal": "1/x at x = 0; clamp x away from 0",
}


@dataclass
class NonFiniteReport:
    """Where the first non-finite gradient came from.

    Attributes:
        op: the node's op, e.g. ``"SqrtBackward0"``.
        node: its id in ``graph``.
        module: the module whose forward created it (with ``modules=``), else None.
        name: the node's name, when it has one (a named tensor or parameter).
        source: the forward line that created it, when the forward ran in
            anomaly mode (``torch.autograd.detect_anomaly(check_nan=False)``).
        path: node ids from the root (the loss) to the node.
        received: norms of the gradients that arrived at the node (finite).
        sent: norms of the gradients it sent on (some inf or NaN).
        reaches: names (or node ids) of the leaves whose gradient in this
            backward holds inf/NaN; ``[]`` when later nodes masked it (e.g. a
            ReLU's zero slope) and every ``.grad`` stayed finite.
        graph: the traced graph (with ``module`` when ``modules=`` was given).
        record: the full :class:`gradgraph.recorder.BackwardRecord`.
    """

    op: str
    node: int
    module: str | None
    name: str | None
    source: str | None
    path: list[int]
    received: tuple[float | None, ...]
    sent: tuple[float | None, ...]
    reaches: list[str | int]
    graph: GradGraph = field(repr=False)
    record: BackwardRecord = field(repr=False)

    @property
    def path_ops(self) -> list[str]:
        """The ops along :attr:`path`, loss first."""
        return [self.graph.dag.nodes[n]["op"] for n in self.path]

    @property
    def cause(self) -> str | None:
        """The usual reason this op makes inf/NaN, when it is a known one."""
        op = self.op.removesuffix("Backward0").removesuffix("Backward1")
        return _CAUSES.get(op)

    def __str__(self) -> str:
        where = [f"node {self.node}"]
        if self.module:
            where.append(f"module {self.module!r}")
        if self.name:
            where.append(f"named {self.name!r}")
        text = (
            f"The first non-finite gradient is made by {self.op} "
            f"({', '.join(where)}): it received finite gradients (norms "
            f"{_norms(self.received)}) and sent {_norms(self.sent)}."
        )
        if self.source:
            text += f" It was created at {self.source}."
        text += f" Path from the loss: {' -> '.join(self.path_ops)}."
        if self.reaches:
            shown = ", ".join(map(str, self.reaches[:5]))
            more = f" and {len(self.reaches) - 5} more" if len(self.reaches) > 5 else ""
            text += f" It reaches the gradient of {shown}{more}."
        else:
            text += " Later nodes mask it: every leaf's gradient stays finite."
        if self.cause:
            text += f" Likely cause: {self.cause}."
        return text

    def to_dot(self, **options: Any) -> str:
        """DOT text with the node filled and its path from the loss bold;
        options as for :func:`gradgraph.render.emphasis.emphasized_dot`."""
        from .render.emphasis import emphasized_dot

        return emphasized_dot(self.graph, **self._picture(options))

    def render(self, path: str | os.PathLike, format: str = "svg", **options) -> str:
        """Write the picture (see :meth:`to_dot`) to ``path``; returns it."""
        from .render.emphasis import render_emphasized

        return render_emphasized(self.graph, path, format, **self._picture(options))

    def _picture(self, options: dict) -> dict:
        sent = f"sent {_norms(self.sent)}"
        options.setdefault("title", f"first non-finite gradient: {self.op}")
        marks = {"mark": {self.node}, "trail": self.path, "lines": {self.node: [sent]}}
        return marks | options


def _norms(norms: tuple[float | None, ...]) -> str:
    return ", ".join("none" if n is None else f"{n:.4g}" for n in norms) or "none"


def _finite(flows: tuple[GradFlow, ...]) -> bool:
    return all(f.norm is None or math.isfinite(f.norm) for f in flows)


def _source(fn: Any) -> str | None:
    """The last user frame of the forward traceback anomaly mode stored, if any."""
    try:
        trace = fn.metadata.get("traceback_")
    except (AttributeError, RuntimeError):
        return None
    if not trace:
        return None
    frames = trace if isinstance(trace, list) else [trace]
    lines = "".join(frames).strip().splitlines()
    files = [i for i, line in enumerate(lines) if line.strip().startswith("File ")]
    if not files:
        return None
    last = files[-1]
    place = lines[last].strip()
    code = lines[last + 1].strip() if last + 1 < len(lines) else ""
    return f"{place}: {code}" if code else place


def find_nonfinite(
    *outputs: Any,
    model: torch.nn.Module | None = None,
    modules: Any = None,
    names: Mapping | None = None,
    params: Mapping | Any = None,
    grad_tensors: Any = None,
    retain_graph: bool = False,
) -> NonFiniteReport | None:
    """Run the backward of ``outputs`` and find where inf/NaN first appears.

    Gradients accumulate into the leaves' ``.grad`` as with a plain
    ``backward()``. Anomaly mode is off during the backward (so it cannot stop
    it at the first NaN) and restored afterwards; every hook is removed, also
    when the backward raises.

    Args:
        *outputs: the loss (or tensors with ``grad_tensors``), as for
            :func:`gradgraph.record_backward`.
        model, params, names: node names, as for :func:`gradgraph.trace`.
        modules: a record from :func:`gradgraph.record_modules`; the report
            then names the module.
        grad_tensors, retain_graph: as for ``torch.autograd.backward``.

    Returns:
        None when every gradient stays finite, else a :class:`NonFiniteReport`
        of the first node (in the order backward ran) that received finite
        gradients and sent inf/NaN.
    """
    with torch.autograd.set_detect_anomaly(False):
        record = record_backward(
            *outputs,
            grad_tensors=grad_tensors,
            retain_graph=retain_graph,
            model=model,
            params=params,
            names=names,
            modules=modules,
        )
    graph = record.graph
    call = record.calls[0] if record.calls else None
    if call is None:
        return None
    culprit = None
    for node in call.finished:
        if not _finite(call.outgoing.get(node, ())) and _finite(call.incoming[node]):
            culprit = node
            break
    if culprit is None:
        return None
    data = graph.dag.nodes[culprit]
    root = next((r for r in graph.roots if nx.has_path(graph.dag, r, culprit)), culprit)
    return NonFiniteReport(
        op=data["op"],
        node=culprit,
        module=data.get("module"),
        name=data.get("name"),
        source=_source(trace(*outputs, keep=True).grad_fn(culprit)),
        path=nx.shortest_path(graph.dag, root, culprit),
        received=tuple(f.norm for f in call.incoming[culprit]),
        sent=tuple(f.norm for f in call.outgoing[culprit]),
        reaches=[
            graph.dag.nodes[n]["name"] or n
            for n in call.order
            if graph.dag.nodes[n]["kind"] == ACCUMULATE
            and not _finite(call.incoming[n])
        ],
        graph=graph,
        record=record,
    )
