"""second_order_blockers(): the nodes whose backward torch cannot differentiate.

A Hessian-vector product differentiates every node's backward once more.
Some backwards have no derivative in torch: the fused attention kernels
(``scaled_dot_product_attention`` picks a flash kernel on CPU), a few ops
(``ctc_loss``, ``cdist``, ``pdist``, cuDNN RNNs) and custom Functions whose
backward is marked ``@once_differentiable``; one has a derivative that is
wrong (the fused weight norm's). Torch only says so deep inside the
second backward (``derivative for aten::..._backward is not implemented``), or,
for a once-differentiable Function that sees a constant gradient, not at all:
the Hessian then silently misses that Function's curvature.

Found without running any backward: one walk over the graph reads each node's
class (known op names; ``NotImplemented``/``DelayedError`` nodes that a
``create_graph`` backward leaves behind) and, for a custom Function, whether its
``backward`` is torch's ``once_differentiable`` wrapper. Every second-order
function of gradgraph calls :func:`check_second_order` first and raises a
:class:`SecondOrderError` that names the node and the fix.

Example:
    >>> import torch
    >>> x = torch.ones(2, 3, 4, 8, requires_grad=True)
    >>> out = torch.nn.functional.scaled_dot_product_attention(x, x, x)
    >>> [b.op for b in second_order_blockers(out.sum())]
    ['ScaledDotProductFlashAttentionForCpuBackward0']
    >>> from torch.nn.attention import SDPBackend, sdpa_kernel
    >>> with sdpa_kernel(SDPBackend.MATH):
    ...     out = torch.nn.functional.scaled_dot_product_attention(x, x, x)
    >>> second_order_blockers(out.sum())
    []
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from .graph import _flatten_outputs, _root_node, trace

__all__ = [
    "SDPA_FIX",
    "Blocker",
    "SecondOrderError",
    "check_second_order",
    "math_attention",
    "second_order_blockers",
    "second_order_failure",
]

SDPA_FIX = (
    "run the forward under `with torch.nn.attention.sdpa_kernel("
    "torch.nn.attention.SDPBackend.MATH):` (the math kernel is twice "
    'differentiable), or load a transformers model with attn_implementation="eager"'
)
_SDPA = re.compile(  # fused attention kernels: flash, memory-efficient, cuDNN
    r"(ScaledDotProduct\w*(Flash|Efficient|Cudnn|Overrideable)"
    r"|^(Flash|Efficient)Attention)\w*Backward"
)
_NO_DOUBLE_BACKWARD = {  # checked on torch 2.13: their backward has no derivative
    "CtcLossBackward0": "ctc_loss",
    "CudnnCtcLossBackward0": "ctc_loss (cuDNN)",
    "CdistBackward0": "cdist",
    "PdistBackward0": "pdist",
    "CudnnRnnBackward0": "the cuDNN RNN kernel",
    "MiopenRnnBackward0": "the MIOpen RNN kernel",
}
_WRONG_DOUBLE_BACKWARD = {  # checked on torch 2.13: a derivative, but a wrong one
    "WeightNormInterfaceBackward0": (
        "torch's double backward of the fused weight norm (torch._weight_norm, "
        "nn.utils.parametrizations.weight_norm) is wrong: its Hessian is not "
        "even symmetric",
        "write the weight norm out (g * v / v.norm(dim=..., keepdim=True)), or "
        "use gradgraph.hessian_diagonal, which propagates through it exactly",
    ),
}
SCALED_BY_FREQUENCY = (
    "an embedding with scale_grad_by_freq divides each row's gradient by how "
    "often its index occurs in the batch: its backward is not the loss's "
    "gradient, so no Hessian of the loss follows from it",
    "build the embedding with scale_grad_by_freq=False for second-order "
    "quantities (the forward is the same)",
)
_DEAD_ENDS = {  # nodes a create_graph backward leaves where a formula is missing
    "NotImplemented": "a node whose derivative torch does not implement",
    "DelayedError": "the gradient of a @once_differentiable backward",
    "Error": "a node torch marks as not differentiable",
}
_ONCE = torch.autograd.function.once_differentiable(lambda ctx: None).__code__
COMPILED = "CompiledFunction"  # torch.compile's AOTAutograd Function


@dataclass(frozen=True)
class Blocker:
    """A node whose backward torch cannot differentiate again.

    Attributes:
        op: the node's class name, e.g. ``"CdistBackward0"``.
        node: its id in ``trace(loss)``.
        module: the module that created it (with ``modules=``), else None.
        reason: why it blocks, in words.
        fix: what to do about it.
    """

    op: str
    node: int
    module: str | None
    reason: str
    fix: str

    def __str__(self) -> str:
        where = f" in module {self.module!r}" if self.module else ""
        return f"{self.op} (node {self.node}{where}): {self.reason}; fix: {self.fix}."


class SecondOrderError(RuntimeError):
    """A second-order quantity was asked of a graph torch cannot differentiate twice.

    ``blockers`` lists the :class:`Blocker` nodes (empty when torch's own message
    was all there was to go on).
    """

    def __init__(self, message: str, blockers: list[Blocker] | None = None):
        super().__init__(message)
        self.blockers = list(blockers or [])


def math_attention():
    """A context in which ``scaled_dot_product_attention`` uses its math kernel,
    the one torch can differentiate twice (what :class:`gradgraph.Curvature`
    runs its forwards under)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(SDPBackend.MATH)


def _reason(fn: Any) -> tuple[str, str] | None:
    """(reason, fix) when ``fn``'s backward cannot be differentiated, else None."""
    op = type(fn).__name__
    if _SDPA.search(op):
        return "fused attention kernel without a double backward", SDPA_FIX
    if op in _NO_DOUBLE_BACKWARD:
        return (
            f"torch has no double backward for {_NO_DOUBLE_BACKWARD[op]}",
            "compute it with differentiable ops, or use a first-order quantity "
            "such as gradgraph.ggn_diagonal",
        )
    if op in _WRONG_DOUBLE_BACKWARD:
        return _WRONG_DOUBLE_BACKWARD[op]
    if getattr(fn, "_saved_scale_grad_by_freq", False):  # Embedding(Bag)
        return SCALED_BY_FREQUENCY
    if op in _DEAD_ENDS:
        return (
            f"{_DEAD_ENDS[op]} (this graph is already a gradient graph)",
            "differentiate the loss, not a gradient built through that node",
        )
    forward_cls = getattr(fn, "_forward_cls", None)
    if getattr(forward_cls, "__name__", None) == COMPILED:
        return (
            "torch.compile's AOTAutograd Function has no double backward",
            "compute the loss with the uncompiled module (compiled._orig_mod) "
            "for second derivatives",
        )
    backward = getattr(forward_cls, "backward", None)
    if getattr(backward, "__code__", None) is _ONCE:
        name = forward_cls.__name__
        return (
            f"custom Function {name} marks its backward @once_differentiable",
            f"write {name}.backward with differentiable torch ops and drop "
            "@once_differentiable, or keep it out of the second-order loss",
        )
    return None


def _walk(fns: Iterable[Any]) -> Iterator[Any]:
    """Every autograd node reachable from ``fns``, once each (explicit stack)."""
    stack = [fn for fn in fns if fn is not None]
    seen = set()
    while stack:
        fn = stack.pop()
        if fn in seen:
            continue
        seen.add(fn)
        yield fn
        stack.extend(child for child, _ in fn.next_functions if child is not None)


def _roots(outputs: tuple) -> list[Any]:
    return [
        _root_node(t, name) for name, t in _flatten_outputs(outputs) if t.requires_grad
    ]


def second_order_blockers(
    *outputs: Any,
    model: torch.nn.Module | None = None,
    modules: Any = None,
    names: Mapping | None = None,
) -> list[Blocker]:
    """The nodes of ``outputs``' graph whose backward torch cannot differentiate.

    Runs no backward: it reads each node's class (see the module docstring).

    Args:
        *outputs: the loss (or any tensors), as for :func:`gradgraph.trace`.
        model, names: node names, as for :func:`gradgraph.trace`.
        modules: a record from :func:`gradgraph.record_modules`; each blocker
            then says which module created it.

    Returns:
        One :class:`Blocker` per blocking node in node-id order; ``[]`` when a
        Hessian-vector product through ``outputs`` can run.
    """
    graph = trace(*outputs, model=model, names=names, modules=modules, keep=True)
    fns, graph._fns = graph._fns, None
    found = []
    for node, fn in enumerate(fns):
        why = _reason(fn)
        if why is not None:
            module = graph.dag.nodes[node].get("module")
            found.append(Blocker(type(fn).__name__, node, module, *why))
    return found


def _message(blockers: list[Blocker], what: str) -> str:
    lines = [
        f"{what} needs a double backward, and torch cannot differentiate the "
        f"backward of {len(blockers)} node(s) of this graph:"
    ]
    lines += [f"  - {b}" for b in blockers[:10]]
    if len(blockers) > 10:
        lines.append(f"  ... and {len(blockers) - 10} more")
    if not any(b.module for b in blockers):
        lines.append(
            "gradgraph.second_order_blockers(loss, modules=rec) with a record from "
            "gradgraph.record_modules(model) says which module created each one."
        )
    return "\n".join(lines)


def _on_parameter_paths(roots: list[Any], params: Iterable[torch.Tensor]) -> set:
    """The nodes a gradient with respect to ``params`` passes through."""
    targets = {p.grad_fn for p in params if p.grad_fn is not None}
    leaves = {id(p) for p in params if p.grad_fn is None}
    parents: dict[Any, list[Any]] = {}
    reaching = []
    for fn in _walk(roots):
        for child, _ in fn.next_functions:
            if child is not None:
                parents.setdefault(child, []).append(fn)
        if fn in targets or id(getattr(fn, "variable", None)) in leaves:
            reaching.append(fn)
    on_path = set(reaching)
    while reaching:  # up from the parameters towards the roots
        for parent in parents.get(reaching.pop(), ()):
            if parent not in on_path:
                on_path.add(parent)
                reaching.append(parent)
    return on_path


def check_second_order(
    *outputs: Any,
    params: Iterable[torch.Tensor] | None = None,
    what: str = "this second-order quantity",
):
    """Raise :class:`SecondOrderError` when ``outputs`` cannot be differentiated
    twice (with respect to ``params``: nodes off their paths do not count);
    cheap (one walk over the node classes) when they can.

    Example:
        >>> x = torch.ones(3, requires_grad=True)
        >>> check_second_order((x ** 3).sum())  # fine: returns None
    """
    roots = _roots(outputs)
    if not any(_reason(fn) is not None for fn in _walk(roots)):
        return
    blockers = second_order_blockers(*outputs)
    if params is not None:
        on_path = _on_parameter_paths(roots, list(params))
        ops = {type(fn).__name__ for fn in on_path if _reason(fn) is not None}
        if not ops:
            return
        blockers = [b for b in blockers if b.op in ops]
    raise SecondOrderError(_message(blockers, what), blockers)


_MISSING = re.compile(
    r"derivative for (?:aten::)?'?(\w+?)'? is not implemented"
    r"|trying to differentiate twice a function that was marked with "
    r"@once_differentiable"
)


def second_order_failure(exc: BaseException) -> SecondOrderError | None:
    """A :class:`SecondOrderError` for torch's error from a double backward, or None.

    For graphs :func:`check_second_order` could not check beforehand (gradients
    handed in with their graph): the op comes from torch's message.

    Example:
        >>> err = RuntimeError("derivative for aten::_pdist_backward is not "
        ...                    "implemented")
        >>> print(second_order_failure(err))  # doctest: +ELLIPSIS
        a double backward failed: torch has no derivative for _pdist_backward ...
    """
    match = _MISSING.search(str(exc))
    if match is None:
        return None
    what = match.group(1) or "a @once_differentiable custom Function's backward"
    fix = SDPA_FIX if "attention" in what else "see second_order_blockers(loss)"
    return SecondOrderError(
        f"a double backward failed: torch has no derivative for {what} (the "
        f"backward of a node of the loss's graph); {fix}. "
        "gradgraph.second_order_blockers(loss) names the node(s)."
    )
