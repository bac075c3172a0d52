"""hvp(): Hessian-vector products by Pearlmutter's double backward.

``H v = d/dθ (∇L(θ) · v)``: one backward with ``create_graph=True`` builds the
gradient's graph, a second backward through it, seeded with ``v``, gives
``H v``. Pass ``grads`` already built with ``create_graph=True`` to skip the
first backward (and to reuse it for many vectors).

Example:
    >>> import torch
    >>> x = torch.tensor([1.0, 2.0], requires_grad=True)
    >>> hvp((x ** 3).sum(), x, torch.tensor([1.0, 0.0]))  # H = diag(6x)
    tensor([6., 0.])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..blockers import check_second_order
from .gradient_hooks import refusing_gradient_hooks
from .params import (
    ParamSet,
    as_params,
    as_vector,
    check_not_inference_mode,
    check_scalar_loss,
    grad_checked,
)


@torch.enable_grad()  # under no_grad the gradient would carry no graph
def gradient_graph(
    loss: torch.Tensor, params: ParamSet, allow_unused: bool = False
) -> list[torch.Tensor]:
    """The gradient with its own graph (``create_graph=True``), ready for HVPs."""
    check_scalar_loss(loss)
    check_second_order(loss, params=params.tensors)
    with refusing_gradient_hooks(loss, params.tensors) as check_hooks:
        grads = grad_checked(loss, params, create_graph=True, allow_unused=allow_unused)
        check_hooks(grads)
    return grads


def hvp_with_grads(
    grads: list[torch.Tensor],
    params: ParamSet,
    vector: list[torch.Tensor],
    retain_graph: bool = True,
) -> list[torch.Tensor]:
    """``H v`` from a gradient built with create_graph=True (no first backward).

    ``v`` goes in as the backward's seed (``grad_outputs``), so no ``∇L · v``
    graph is built: one backward through the gradient's graph, nothing more.
    """
    live = [(g, v) for g, v in zip(grads, vector, strict=True) if g.requires_grad]
    if not live:  # the gradient does not depend on the parameters: L is linear
        return [torch.zeros_like(p) for p in params.tensors]
    return [
        h.detach()
        for h in grad_checked(
            [g for g, _ in live],
            params,
            grad_outputs=[v for _, v in live],
            retain_graph=retain_graph,
            allow_unused=True,
        )
    ]


def flat_hvp(
    loss: torch.Tensor, params: ParamSet, allow_unused: bool = False
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``v -> H v`` on flat vectors, the matvec of :mod:`.estimate`.

    Builds the gradient graph once; every call is one second backward.
    """
    params.check_uniform()
    grads = gradient_graph(loss, params, allow_unused=allow_unused)

    def matvec(vector: torch.Tensor) -> torch.Tensor:
        return params.flatten(hvp_with_grads(grads, params, params.unflatten(vector)))

    return matvec


def hvp(
    loss: torch.Tensor | None,
    params: Any,
    vector: Any,
    grads: Any = None,
    allow_unused: bool = False,
) -> Any:
    """Hessian-vector product ``H v`` of a scalar ``loss``.

    Args:
        loss: scalar tensor (may be None when ``grads`` is given).
        params: Module, dict name -> tensor, list of tensors or one tensor.
        vector: ``v`` in the same form as ``params`` (or one flat vector).
        grads: gradients from ``autograd.grad(loss, params, create_graph=True)``,
            in the same form as ``params``; reused, so no first backward is done.
        allow_unused: give zeros for parameters the loss does not depend on
            instead of raising.

    Returns:
        ``H v`` in the form of ``params``, detached.
    """
    ps = as_params(params)
    v = as_vector(vector, ps)
    if grads is None:
        if loss is None:
            raise ValueError("pass the loss, or grads built with create_graph=True.")
        g = gradient_graph(loss, ps, allow_unused=allow_unused)
    else:
        check_not_inference_mode()
        g = as_vector(grads, ps, what="grads", check_finite=False)
        if not any(t.requires_grad for t in g):
            raise ValueError(
                "grads carry no graph; compute them with "
                "torch.autograd.grad(loss, params, create_graph=True)."
            )
    return ps.pack(hvp_with_grads(g, ps, v))
