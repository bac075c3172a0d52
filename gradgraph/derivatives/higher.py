"""derivatives(): f'(x), f''(x), ... by repeated ``autograd.grad(create_graph=True)``.

Each derivative is differentiated again, so each order's graph is built on
top of the last one's; ``graph=True`` also returns that graph for every order
(a :class:`~gradgraph.graph.GradGraph`), the picture of how
``create_graph=True`` grows the graph.

Example:
    >>> derivatives(lambda x: x ** 4, 1.0, 3)  # the seed notebook: 4, 12, 24
    [tensor(4.), tensor(12.), tensor(24.)]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..blockers import check_second_order
from ..graph import trace
from .params import check_not_inference_mode

__all__ = ["derivatives"]


def _as_input(x: Any) -> torch.Tensor:
    if isinstance(x, bool):
        raise TypeError("x must be a number or a floating tensor, got a bool.")
    if isinstance(x, (int, float)):
        return torch.tensor(float(x), requires_grad=True)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a number or a tensor, got {type(x).__name__}.")
    if not x.is_floating_point():
        raise TypeError(
            f"x must be a floating tensor to differentiate, got {x.dtype}; "
            "convert it with x.double() or x.float()."
        )
    return x.detach().requires_grad_(True)


def _differentiate(
    f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, order: int, graph: bool
) -> list[torch.Tensor]:
    y = f(x)
    if not isinstance(y, torch.Tensor) or y.shape != x.shape:
        got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise ValueError(
            f"f(x) must have x's shape {tuple(x.shape)} (an elementwise f), got "
            f"{got}; for a scalar function of many inputs use hessian() or hvp()."
        )
    seed = torch.ones_like(y) if y.dim() else None
    if order >= 2 and y.requires_grad:
        check_second_order(y, params=[x], what=f"derivatives(order={order})")
    found: list[torch.Tensor] = []
    for k in range(1, order + 1):
        if not y.requires_grad:  # constant from here on
            found.extend(torch.zeros_like(x) for _ in range(order - k + 1))
            break
        (d,) = torch.autograd.grad(
            y, x, grad_outputs=seed, create_graph=graph or k < order, allow_unused=True
        )
        y = torch.zeros_like(x) if d is None else d
        found.append(y)
    return found


def derivatives(
    f: Callable[[torch.Tensor], torch.Tensor],
    x: Any,
    order: int,
    graph: bool = False,
) -> Any:
    """The first ``order`` derivatives of an elementwise ``f`` at ``x``.

    Args:
        f: a function of one tensor returning a tensor of the same shape,
            each output entry depending only on the same input entry
            (``x ** 4``, ``torch.sin``, ...). For a scalar ``x``, any scalar
            function.
        x: a number or a floating tensor (not changed; a detached copy is
            differentiated).
        order: how many derivatives (>= 1).
        graph: also return, per order, the GradGraph of that derivative
            (``None`` for an order that is constant and so has no graph).

    Returns:
        ``[f'(x), ..., f^(order)(x)]`` (detached, x's shape), or that list and
        the list of GradGraphs when ``graph=True``.

    Example:
        >>> ds, graphs = derivatives(torch.sin, torch.zeros(2), 2, graph=True)
        >>> ds[0], len(graphs)
        (tensor([1., 1.]), 2)
    """
    if not callable(f):
        raise TypeError(f"f must be callable, got {type(f).__name__}.")
    if isinstance(order, bool) or not isinstance(order, int) or order < 1:
        raise ValueError(f"order must be an int >= 1, got {order!r}.")
    check_not_inference_mode()
    x = _as_input(x)
    if torch.is_grad_enabled():
        found = _differentiate(f, x, order, graph)
    else:
        with torch.enable_grad():
            found = _differentiate(f, x, order, graph)
    values = [d.detach() if d.requires_grad else d for d in found]
    if not graph:
        return values
    graphs = [trace(d, names={x: "x"}) if d.requires_grad else None for d in found]
    return values, graphs
