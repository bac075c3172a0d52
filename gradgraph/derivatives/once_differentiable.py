"""Custom autograd Functions whose backward is ``@once_differentiable``.

Such a backward runs under ``no_grad``: its result carries no graph back to the
Function's inputs, so a second derivative through it is not zero but unknown.
Autograd raises only when the incoming gradient itself requires grad; for a
loss built on top of it, the gradient usually has no graph there, and a
Hessian would silently miss that part. Every second-order method checks the
loss's graph here first and raises :class:`OnceDifferentiableError` instead.

Example:
    >>> import torch
    >>> from torch.autograd.function import once_differentiable
    >>> class Square(torch.autograd.Function):
    ...     @staticmethod
    ...     def forward(ctx, x):
    ...         ctx.save_for_backward(x)
    ...         return x * x
    ...     @staticmethod
    ...     @once_differentiable
    ...     def backward(ctx, g):
    ...         return 2 * ctx.saved_tensors[0] * g
    >>> w = torch.ones(2, requires_grad=True)
    >>> once_differentiable_ops(Square.apply(w).sum(), [w])
    ['Square']
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.autograd.function import BackwardCFunction, once_differentiable

__all__ = [
    "OnceDifferentiableError",
    "check_twice_differentiable",
    "once_differentiable_ops",
]

_WRAPPER_CODE = once_differentiable(lambda ctx, *grads: grads).__code__


class OnceDifferentiableError(RuntimeError):
    """A second derivative was asked through a once-differentiable backward."""


COMPILED = "CompiledFunction"
"""torch.compile's AOTAutograd Function: its backward has no double backward."""


def _is_once_differentiable(fn: object) -> bool:
    if not isinstance(fn, BackwardCFunction):
        return False
    if fn._forward_cls.__name__ == COMPILED:
        return True
    backward = getattr(fn._forward_cls, "backward", None)
    return getattr(backward, "__code__", None) is _WRAPPER_CODE


def _targets(params: Sequence[torch.Tensor]) -> tuple[set[int], set[int]]:
    """ids of the params' own nodes (non-leaf) and of the leaf params."""
    nodes = {id(p.grad_fn) for p in params if p.grad_fn is not None}
    leaves = {id(p) for p in params if p.grad_fn is None}
    return nodes, leaves


def once_differentiable_ops(
    loss: torch.Tensor, params: Sequence[torch.Tensor]
) -> list[str]:
    """Names of the once-differentiable Functions between ``params`` and ``loss``.

    Only Functions a parameter's gradient flows through count; each name once,
    in the order the walk (from the loss) meets them.
    """
    root = loss.grad_fn
    if root is None:
        return []
    target_nodes, target_leaves = _targets(params)
    parents: dict[int, list[object]] = {id(root): []}
    order, stack = [root], [root]
    while stack:
        fn = stack.pop()
        for child, _ in fn.next_functions:
            if child is None:
                continue
            if id(child) not in parents:
                parents[id(child)] = []
                order.append(child)
                stack.append(child)
            parents[id(child)].append(fn)
    reaching = [
        fn
        for fn in order
        if id(fn) in target_nodes or id(getattr(fn, "variable", None)) in target_leaves
    ]
    reaches = {id(fn) for fn in reaching}
    while reaching:  # up from the params: every node a parameter's gradient uses
        for parent in parents[id(reaching.pop())]:
            if id(parent) not in reaches:
                reaches.add(id(parent))
                reaching.append(parent)
    found: list[str] = []
    for fn in order:
        if id(fn) in reaches and _is_once_differentiable(fn):
            name = fn._forward_cls.__name__
            if name not in found:
                found.append(name)
    return found


def check_twice_differentiable(
    loss: torch.Tensor, params: Sequence[torch.Tensor]
) -> None:
    """Raise :class:`OnceDifferentiableError` naming each blocking Function."""
    found = once_differentiable_ops(loss, params)
    if found:
        raise OnceDifferentiableError(
            f"the loss's graph goes through {', '.join(found)}: custom "
            "autograd.Function(s) whose backward is marked @once_differentiable, "
            "so autograd cannot differentiate them twice and second derivatives "
            "through them would come out wrong (missing terms, often zeros). "
            "Write their backward with differentiable torch ops (without "
            "@once_differentiable), or use only first-order tools on this loss."
            + (
                f" {COMPILED} is torch.compile's: compute the loss with the "
                "uncompiled module (compiled._orig_mod) for second derivatives."
                if COMPILED in found
                else ""
            )
        )
