"""Exact Hessians: dense, per-parameter blocks, and the true diagonal.

All three differentiate the gradient (built once with ``create_graph=True``)
against batches of unit vectors, with ``is_grads_batched=True`` so one
vmapped backward gives many rows (a plain loop where an op has no batching
rule). They work for any graph autograd can differentiate twice.

``hessian_blocks`` returns each parameter's own ``numel x numel`` block
``d²L / dθ_p²``: what the seed notebook's "Hessian diagonal" section computes
when it differentiates each gradient entry against its own parameter.
``hessian_diagonal`` gives the true diagonal, exactly or by an estimator;
its ``method`` is looked up in :data:`DIAGONAL_METHODS`, so a new method is
one entry there.

Example:
    >>> import torch
    >>> x = torch.tensor([1.0, 2.0], requires_grad=True)
    >>> hessian((x[0] * x[1]) ** 2, x)
    tensor([[8., 8.],
            [8., 2.]])
    >>> hessian_diagonal((x[0] * x[1]) ** 2, x)
    tensor([8., 2.])
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch

from .estimate import diagonal_estimate, progress_bar
from .hvp import gradient_graph, hessian_matvec
from .params import ParamSet, as_params
from .propagation import diagonal_by_propagation, propagation_obstacles

__all__ = [
    "DEFAULT_MAX_SIZE",
    "DIAGONAL_METHODS",
    "hessian",
    "hessian_blocks",
    "hessian_diagonal",
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
        if "batching rule" not in str(exc) and "vmap" not in str(exc):
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


def _diagonal_exact(
    loss: torch.Tensor,
    ps: ParamSet,
    *,
    batch_size: int = 32,
    allow_unused: bool = False,
    progress: bool = True,
    **_: Any,
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


def _diagonal_estimated(method: str) -> Callable[..., list[torch.Tensor]]:
    def estimate(
        loss: torch.Tensor,
        ps: ParamSet,
        *,
        matvecs: int = 64,
        generator: Any = None,
        allow_unused: bool = False,
        progress: bool = True,
        **_: Any,
    ) -> list[torch.Tensor]:
        flat = diagonal_estimate(
            **hessian_matvec(loss, ps, allow_unused, progress),
            method=method,
            matvecs=matvecs,
            generator=generator,
        )
        return ps.unflatten(flat)

    estimate.__name__ = f"_diagonal_{method}"
    return estimate


def _diagonal_auto(
    loss: torch.Tensor, ps: ParamSet, *, allow_unused: bool = False, **options: Any
) -> list[torch.Tensor]:
    """Propagation when every op has a curvature rule, else the exact rows."""
    obstacles = propagation_obstacles(loss, ps, allow_unused=allow_unused)
    if not obstacles:
        return diagonal_by_propagation(loss, ps, allow_unused=allow_unused)
    if obstacles[-1].startswith("memory:"):
        warnings.warn(
            f"hessian_diagonal: {obstacles[-1]}; computing exact HVP rows instead.",
            RuntimeWarning,
            stacklevel=3,
        )
    return _diagonal_exact(loss, ps, allow_unused=allow_unused, **options)


DIAGONAL_METHODS: dict[str, Callable[..., list[torch.Tensor]]] = {
    "exact": _diagonal_exact,
    "auto": _diagonal_auto,
    "propagate": diagonal_by_propagation,
    "hutchinson": _diagonal_estimated("hutchinson"),
    "xdiag": _diagonal_estimated("xdiag"),
}
"""``method`` name -> ``fn(loss, paramset, **options) -> per-parameter tensors``.

Options passed: ``matvecs``, ``generator``, ``batch_size``, ``allow_unused``,
``progress``; a method takes the ones it needs and ignores the rest.
"""


def hessian_diagonal(
    loss: torch.Tensor,
    params: Any,
    method: str = "auto",
    *,
    matvecs: int = 64,
    generator: torch.Generator | int | None = None,
    batch_size: int = 32,
    allow_unused: bool = False,
    progress: bool = True,
) -> Any:
    """The diagonal of the Hessian, in the form of ``params``.

    Args:
        loss: scalar tensor with a graph.
        params: Module, dict name -> tensor, list of tensors or one tensor.
        method: ``"exact"`` (one HVP row per parameter entry, batched;
            works on any graph), ``"propagate"`` (curvature propagation
            through the graph, see :mod:`gradgraph.derivatives.propagation`;
            raises :class:`UnsupportedOpError` naming an op without a rule),
            ``"auto"`` (``"propagate"`` when every op has a rule, else
            ``"exact"``; :func:`diagonal_method` says which), ``"xdiag"`` or
            ``"hutchinson"`` (estimates from ``matvecs`` HVPs; see
            :mod:`gradgraph.derivatives.estimate`).
        matvecs: HVPs an estimator may spend.
        generator: ``torch.Generator`` or int seed for the estimators.
        batch_size: rows per vmapped backward for ``"exact"``.
        allow_unused: zeros for parameters the loss does not depend on.

    Example:
        >>> w = torch.tensor([1.0, 2.0], requires_grad=True)
        >>> hessian_diagonal((w.prod() + w ** 3).sum(), {"w": w})
        {'w': tensor([ 6., 12.])}
    """
    if method not in DIAGONAL_METHODS:
        raise ValueError(
            f"unknown method {method!r}; choose one of {sorted(DIAGONAL_METHODS)}."
        )
    ps = as_params(params)
    diagonal = DIAGONAL_METHODS[method](
        loss,
        ps,
        matvecs=matvecs,
        generator=generator,
        batch_size=batch_size,
        allow_unused=allow_unused,
        progress=progress,
    )
    return ps.pack(diagonal)
