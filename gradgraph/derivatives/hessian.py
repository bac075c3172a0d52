"""Exact Hessians: dense, per-parameter blocks, and the true diagonal.

All three differentiate the gradient (built once with ``create_graph=True``)
against batches of unit vectors, with ``is_grads_batched=True`` so one
vmapped backward gives many rows (a plain loop where an op has no batching
rule). They work for any graph autograd can differentiate twice.

``hessian_blocks`` returns each parameter's own ``numel x numel`` block
``d²L / dθ_p²``: what the seed notebook's "Hessian diagonal" section computes
when it differentiates each gradient entry against its own parameter.
:data:`DIAGONAL_METHODS` holds the exact routes to the true diagonal of one
loss that :func:`~gradgraph.hessian_diagonal` and every
:class:`~gradgraph.derivatives.operator.HessianOperator` look ``method`` up
in, so a new exact method is one entry there.

Example:
    >>> import torch
    >>> x = torch.tensor([1.0, 2.0], requires_grad=True)
    >>> hessian((x[0] * x[1]) ** 2, x)
    tensor([[8., 8.],
            [8., 2.]])
    >>> DIAGONAL_METHODS["rows"]((x[0] * x[1]) ** 2, as_params(x), progress=False)
    [tensor([8., 2.])]
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch

from ..blockers import check_second_order
from .estimate import progress_bar
from .gradient_hooks import check_gradient_hooks
from .hvp import gradient_graph
from .params import ParamSet, as_params, unused_hint
from .propagation import (
    UnsupportedOpError,
    diagonal_by_propagation,
)
from .propagation.engine import propagation_plan

__all__ = [
    "DEFAULT_MAX_SIZE",
    "DIAGONAL_METHODS",
    "hessian",
    "hessian_blocks",
]

DEFAULT_MAX_SIZE = 4096
"""Largest side (parameters) a dense Hessian or block is built for by default."""


def _check_size(numel: int, max_size: int, what: str) -> None:
    if numel > max_size:
        raise ValueError(
            f"the {what} would be {numel} x {numel} ({numel * numel:,} entries), "
            f"over max_size={max_size}; pass a larger max_size if it fits in memory, "
            "or use hessian_blocks, hessian_diagonal or hvp instead."
        )


def _chunks(numel: int, batch_size: int, progress: bool, desc: str) -> Iterator:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int):
        raise TypeError(f"batch_size must be an int, got {batch_size!r}.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")
    with progress_bar(numel, desc, progress) as bar:
        for start in range(0, numel, batch_size):
            stop = min(start + batch_size, numel)
            yield start, stop
            bar.update(stop - start)


def _needs_plain_loop(exc: RuntimeError) -> bool:
    """Whether a vmapped backward failed for want of batching (anomaly mode, a
    hook calling ``.item()``, an op without a batching rule): retry row by row."""
    message = str(exc).lower()
    return "batching rule" in message or "vmap" in message or "batched" in message


def _rows(
    outputs: list[torch.Tensor], inputs: list[torch.Tensor], seeds: list[torch.Tensor]
) -> list[torch.Tensor]:
    """Batched vector-Jacobian products: ``seeds[i]`` has a leading batch dim.

    Returns, per input, a ``(batch, *input.shape)`` tensor; zeros where an
    output does not depend on an input.
    """
    batch = seeds[0].shape[0]
    live = [(o, s) for o, s in zip(outputs, seeds, strict=True) if o.requires_grad]
    if not live:
        return [t.new_zeros((batch, *t.shape)) for t in inputs]
    outs, grads_out = [o for o, _ in live], [s for _, s in live]
    try:
        got = torch.autograd.grad(
            outs,
            inputs,
            grad_outputs=grads_out,
            retain_graph=True,
            allow_unused=True,
            is_grads_batched=True,
        )
    except RuntimeError as exc:
        if not _needs_plain_loop(exc):
            raise
        per_row = [
            torch.autograd.grad(
                outs,
                inputs,
                grad_outputs=[s[b] for s in grads_out],
                retain_graph=True,
                allow_unused=True,
            )
            for b in range(batch)
        ]
        got = [
            None if column[0] is None else torch.stack(column)
            for column in zip(*per_row, strict=True)
        ]
    return [
        t.new_zeros((batch, *t.shape)) if g is None else g.detach()
        for g, t in zip(got, inputs, strict=True)
    ]


def _unit_rows(start: int, stop: int, numel: int, like: torch.Tensor) -> torch.Tensor:
    """Rows ``start:stop`` of the ``numel x numel`` identity."""
    eye = torch.zeros(stop - start, numel, dtype=like.dtype, device=like.device)
    eye[torch.arange(stop - start), torch.arange(start, stop)] = 1
    return eye


def hessian(
    loss: torch.Tensor,
    params: Any,
    *,
    max_size: int = DEFAULT_MAX_SIZE,
    batch_size: int = 32,
    allow_unused: bool = False,
    progress: bool = True,
) -> torch.Tensor:
    """The dense Hessian of a scalar ``loss`` as one ``(n, n)`` matrix.

    Rows and columns follow the parameters in order (a Module's
    ``named_parameters()`` order), each flattened row-major.

    Args:
        loss: scalar tensor with a graph.
        params: Module, dict name -> tensor, list of tensors or one tensor.
        max_size: refuse beyond this many parameters (``n * n`` entries).
        batch_size: rows per vmapped backward (memory grows with it).
        allow_unused: zeros for parameters the loss does not depend on.

    Example:
        >>> x = torch.tensor([1.0, 2.0], requires_grad=True)
        >>> hessian((x ** 3).sum(), [x])
        tensor([[ 6.,  0.],
                [ 0., 12.]])
    """
    ps = as_params(params)
    _check_size(ps.numel, max_size, "Hessian")
    grads = gradient_graph(loss, ps, allow_unused=allow_unused)
    rows = []
    for start, stop in _chunks(ps.numel, batch_size, progress, "Hessian rows"):
        seeds = ps.unflatten_batch(_unit_rows(start, stop, ps.numel, ps.tensors[0]))
        rows.append(ps.flatten_batch(_rows(grads, ps.tensors, seeds)))
    return torch.cat(rows)


def _block_rows(
    grad: torch.Tensor, param: torch.Tensor, batch_size: int, progress: bool, name: str
) -> Iterator[tuple[int, int, torch.Tensor]]:
    """``(start, stop, rows)`` of ``d grad / d param`` as ``(k, numel)`` blocks."""
    numel = param.numel()
    for start, stop in _chunks(numel, batch_size, progress, f"block {name}"):
        seed = _unit_rows(start, stop, numel, param).view(-1, *param.shape)
        (rows,) = _rows([grad], [param], [seed])
        yield start, stop, rows.reshape(stop - start, numel)


def hessian_blocks(
    loss: torch.Tensor,
    params: Any,
    *,
    max_size: int = DEFAULT_MAX_SIZE,
    batch_size: int = 32,
    allow_unused: bool = False,
    progress: bool = True,
) -> Any:
    """Each parameter's own Hessian block ``d²L / dθ_p²`` (``numel x numel``).

    The blocks on the Hessian's diagonal, one per parameter tensor; their
    diagonals together are the Hessian's diagonal. Returned in the form of
    ``params`` (a dict for a Module or dict, a list for a list).

    Args:
        max_size: refuse a parameter with more entries than this.
        Others as in :func:`hessian`.

    Example:
        >>> w = torch.tensor([1.0, 2.0], requires_grad=True)
        >>> b = torch.tensor([0.5], requires_grad=True)
        >>> hessian_blocks(((w ** 2).sum() * b).sum(), {"w": w, "b": b})["w"]
        tensor([[1., 0.],
                [0., 1.]])
    """
    ps = as_params(params)
    for name, tensor in zip(ps.names, ps.tensors, strict=True):
        _check_size(tensor.numel(), max_size, f"block of {name!r}")
    grads = gradient_graph(loss, ps, allow_unused=allow_unused)
    blocks = []
    for name, grad, param in zip(ps.names, grads, ps.tensors, strict=True):
        block = param.new_zeros(param.numel(), param.numel())
        for start, stop, rows in _block_rows(grad, param, batch_size, progress, name):
            block[start:stop] = rows
        blocks.append(block)
    return ps.pack(blocks)


def _diagonal_rows(
    loss: torch.Tensor,
    ps: ParamSet,
    *,
    batch_size: int = 32,
    allow_unused: bool = False,
    progress: bool = True,
) -> list[torch.Tensor]:
    """One batched HVP row per coordinate, restricted to its own parameter."""
    grads = gradient_graph(loss, ps, allow_unused=allow_unused)
    diagonal = []
    for name, grad, param in zip(ps.names, grads, ps.tensors, strict=True):
        flat = param.new_zeros(param.numel())
        for start, stop, rows in _block_rows(grad, param, batch_size, progress, name):
            local = torch.arange(stop - start)
            flat[start:stop] = rows[local, local + start]
        diagonal.append(flat.view(param.shape))
    return diagonal


def _diagonal_propagated(
    loss: torch.Tensor,
    ps: ParamSet,
    *,
    batch_size: int = 32,
    allow_unused: bool = False,
    progress: bool = True,
    plan: Any = None,
) -> list[torch.Tensor]:
    """Curvature propagation (no rows, no bar: ``batch_size``/``progress`` unused),
    once no hook changes a gradient (propagation cannot see them). A node
    without a rule that no method could differentiate twice (a once-differentiable
    or compiled Function) raises :class:`~gradgraph.SecondOrderError`.
    ``plan``: the loss's propagation plan, when the caller made one."""
    check_gradient_hooks(loss, ps.tensors)
    try:
        return diagonal_by_propagation(loss, ps, allow_unused=allow_unused, plan=plan)
    except UnsupportedOpError:  # a node no method can differentiate twice says so
        check_second_order(loss, params=ps.tensors, what="the Hessian diagonal")
        raise


def _diagonal_exact(
    loss: torch.Tensor,
    ps: ParamSet,
    *,
    batch_size: int = 32,
    allow_unused: bool = False,
    progress: bool = True,
) -> list[torch.Tensor]:
    """Propagation when every op has a curvature rule (and the sweep fits the
    memory budget), else the HVP rows. Intermediate (non-leaf) tensors as
    params take the rows too."""
    if all(t.is_leaf for t in ps.tensors):
        try:
            plan = propagation_plan(loss, ps, allow_unused=allow_unused)
        except ValueError as exc:
            hint = unused_hint(loss) if "does not depend" in str(exc) else ""
            if hint:
                raise ValueError(f"{exc}{hint}") from exc
            raise
        blocked = plan.blocked
        if not blocked:
            try:
                return _diagonal_propagated(
                    loss, ps, allow_unused=allow_unused, plan=plan
                )
            except UnsupportedOpError as exc:  # it outgrew the budget as it ran
                if not str(exc).startswith("memory:"):
                    raise
                blocked = [str(exc)]
        del plan  # it holds the graph's nodes
        if blocked[-1].startswith("memory:"):
            warnings.warn(
                f"hessian_diagonal: {blocked[-1]}; computing exact HVP rows instead.",
                RuntimeWarning,
                stacklevel=3,
            )
    return _diagonal_rows(
        loss, ps, batch_size=batch_size, allow_unused=allow_unused, progress=progress
    )


DIAGONAL_METHODS: dict[str, Callable[..., list[torch.Tensor]]] = {
    "exact": _diagonal_exact,
    "rows": _diagonal_rows,
    "propagate": _diagonal_propagated,
}
"""The exact diagonal methods of one loss: ``method`` name ->
``fn(loss, paramset, *, batch_size, allow_unused, progress)`` -> per-parameter
tensors. ``"exact"`` picks the fastest exact route (:func:`diagonal_method`
says which); the estimators (``"xdiag"``, ``"hutchinson"``) live in
:data:`gradgraph.derivatives.estimate.DIAGONAL_ESTIMATORS`.
"""
