"""Refuse gradient hooks that change a gradient: their Hessian has no one meaning.

A hook such as ``h.register_hook(lambda g: 10 * g)`` changes what backward
computes, not the loss. Curvature propagation never sees it, while a double
backward runs it in both passes (100x instead of 10x), so no two methods would
agree. gradgraph's second-order methods are defined on the loss as a function
of the parameters, so they refuse such a graph: :func:`refusing_gradient_hooks`
watches the first backward and raises :class:`GradientHookError` naming the
node whose incoming gradient a hook changed. Hooks that only look (return
``None``) are fine.

Example:
    >>> import torch
    >>> w = torch.ones(2, requires_grad=True)
    >>> h = w * 3
    >>> _ = h.register_hook(lambda g: 10 * g)
    >>> loss = (h**2).sum()
    >>> with refusing_gradient_hooks(loss, [w]) as check:
    ...     grads = torch.autograd.grad(loss, [w], create_graph=True)
    ...     check(grads)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    gradgraph.derivatives.gradient_hooks.GradientHookError: a gradient hook ...
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch

__all__ = ["GradientHookError", "check_gradient_hooks", "refusing_gradient_hooks"]


MODULE_HOOK_NODE = "BackwardHookFunctionBackward"
"""The identity node that ``register_full_backward_hook`` puts in the graph."""


class GradientHookError(ValueError):
    """A hook changes a gradient inside the loss's graph."""


def _nodes(loss: torch.Tensor) -> list:
    root, seen, stack = loss.grad_fn, set(), [loss.grad_fn]
    found = []
    while stack:
        fn = stack.pop()
        if fn is None or id(fn) in seen:
            continue
        seen.add(id(fn))
        found.append(fn)
        stack.extend(child for child, _ in fn.next_functions)
    return found if root is not None else []


def _same(got: torch.Tensor | None, want: torch.Tensor | None) -> bool:
    if got is want:  # passed on untouched (the usual case: no comparison)
        return True
    if got is None or want is None:
        return (got is None) == (want is None) or (
            want is None and not bool(got.detach().abs().max() > 0)
        )
    if got.shape != want.shape:
        return False
    got, want = got.detach(), want.detach()
    rtol = max(1e-4, 50 * torch.finfo(got.dtype).eps)
    atol = rtol * float(want.abs().max()) if want.numel() else 0.0
    return bool(torch.allclose(got, want.to(got.dtype), rtol=rtol, atol=atol))


def _refuse(where: str) -> None:
    raise GradientHookError(
        f"a gradient hook changes the gradient flowing into {where} (a "
        "tensor.register_hook or node hook that returns a new gradient). Hooks "
        "change what backward computes, not the loss, so second derivatives "
        "have no single meaning there (a double backward would apply the hook "
        "twice, curvature propagation not at all); remove the hook "
        "(handle.remove()) while computing second-order quantities."
    )


@contextmanager
def refusing_gradient_hooks(
    loss: torch.Tensor, params: Sequence[torch.Tensor]
) -> Iterator[Callable[[Sequence[torch.Tensor | None]], None]]:
    """Watch the backward run inside the block for gradients changed by hooks.

    Yields ``check(grads)``: call it with the gradients of ``params`` the
    backward returned; it compares what reached each parameter with what was
    sent to it. Nodes the backward ran through are checked as it runs.
    Every watching hook is removed when the block ends.
    """
    nodes = _nodes(loss)
    sent: dict[tuple[int, int], torch.Tensor] = {}
    names = {id(fn): fn.name() for fn in nodes}
    handles = []

    def after(fn):
        children = [(id(child), nr) for child, nr in fn.next_functions]
        passes_through = names[id(fn)] == MODULE_HOOK_NODE

        def hook(grad_inputs, grad_outputs):
            if passes_through:  # its backward is the identity: a change is a hook's
                for got, want in zip(grad_inputs, grad_outputs, strict=False):
                    if not _same(got, want):
                        _refuse(f"{names[id(fn)]} (a module's full backward hook)")
            with torch.no_grad():
                for (child, nr), grad in zip(children, grad_inputs, strict=False):
                    if grad is None or child is None:
                        continue
                    key = (child, nr)
                    sent[key] = grad.detach() + sent[key] if key in sent else grad
            return None

        return hook

    def before(fn):
        def hook(grad_outputs):
            for nr, got in enumerate(grad_outputs):
                want = sent.pop((id(fn), nr), None)
                if fn is loss.grad_fn and want is None:
                    want = torch.ones_like(got) if got is not None else None
                if not _same(got, want):
                    _refuse(names[id(fn)])
            return None

        return hook

    def check(grads: Sequence[torch.Tensor | None]) -> None:
        for param, grad in zip(params, grads, strict=True):
            if param.grad_fn is not None:
                key, where = (id(param.grad_fn), param.output_nr), "a parameter"
            else:
                accumulate = next(
                    (f for f in nodes if getattr(f, "variable", None) is param), None
                )
                if accumulate is None:
                    continue
                key, where = (id(accumulate), 0), "a parameter"
            want = sent.get(key)
            if want is not None and not _same(grad, want):
                _refuse(where)

    try:
        for fn in nodes:
            handles.append(fn.register_hook(after(fn)))
            handles.append(fn.register_prehook(before(fn)))
        yield check
    finally:
        for handle in handles:
            handle.remove()


def check_gradient_hooks(loss: torch.Tensor, params: Sequence[torch.Tensor]) -> None:
    """One watched first-order backward (the graph is kept): raise if a hook
    changes a gradient. For methods that never run autograd's backward."""
    if loss.grad_fn is None:
        return  # nothing to watch; the caller reports the missing graph
    with torch.enable_grad(), refusing_gradient_hooks(loss, params) as check:
        try:
            grads = torch.autograd.grad(
                loss, params, retain_graph=True, allow_unused=True
            )
        except RuntimeError:
            return  # a freed graph...: the caller's own walk says what is wrong
        check(grads)
