"""The Hessian's diagonal, trace, eigenvalues and spectral density, as functions.

Each function takes either a scalar ``loss`` and its ``params`` or a
:class:`~gradgraph.derivatives.operator.HessianOperator` (from
:func:`hessian_operator` or a :class:`~gradgraph.Curvature` over a dataset)
and asks that operator: a loss over one batch is a dataset of one batch, so
both go through the same code in :mod:`gradgraph.derivatives.operator`. The
gradient graph of ``loss`` is built once and reused by every product.

Example:
    >>> import torch
    >>> x = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64, requires_grad=True)
    >>> values, vectors = hessian_eigenvalues((x ** 3).sum(), x, k=1, progress=False)
    >>> values.round(decimals=6), vectors[0].abs().round(decimals=6)
    (tensor([18.], dtype=torch.float64), tensor([0., 0., 1.], dtype=torch.float64))
    >>> op = hessian_operator((x ** 3).sum(), x, progress=False)
    >>> round(float(hessian_trace(op, method="exact")), 9)  # 6 (1 + 2 + 3)
    36.0
"""

from __future__ import annotations

from typing import Any

import torch

from ..deprecation import renamed_keyword
from .estimate import SpectralDensity
from .operator import HessianOperator, hessian_operator

__all__ = [
    "hessian_density",
    "hessian_diagonal",
    "hessian_eigenvalues",
    "hessian_operator",
    "hessian_trace",
]

Seed = torch.Generator | int | None


def _operator(
    loss: Any, params: Any, allow_unused: bool | None, progress: bool | None
) -> HessianOperator:
    """``loss`` when it already is an operator, else the Hessian of ``loss``."""
    if isinstance(loss, HessianOperator):
        if params is not None or allow_unused is not None or progress is not None:
            raise TypeError(
                "params, allow_unused and progress belong to the operator: pass "
                "either a HessianOperator alone or a loss with its params (and "
                "pass method= by keyword)."
            )
        return loss
    if params is None:
        raise TypeError(
            "pass the params to differentiate with respect to (a Module, dict, "
            "list or tensor), or a HessianOperator instead of a loss."
        )
    return hessian_operator(
        loss,
        params,
        allow_unused=bool(allow_unused),
        progress=True if progress is None else progress,
    )


@renamed_keyword("generator", "seed")
def hessian_diagonal(
    loss: torch.Tensor | HessianOperator,
    params: Any = None,
    method: str = "exact",
    *,
    matvecs: int = 64,
    seed: Seed = None,
    batch_size: int = 32,
    allow_unused: bool | None = None,
    progress: bool | None = None,
) -> Any:
    """The diagonal of the Hessian, in the form of ``params``.

    Args:
        loss: scalar tensor with a graph, or a HessianOperator (then no
            ``params``, ``allow_unused`` or ``progress``: the operator has them).
        params: Module, dict name -> tensor, list of tensors or one tensor.
        method: ``"exact"`` (the default: ``"propagate"`` when every op has a
            curvature rule, else ``"rows"``; :func:`diagonal_method` says
            which), ``"rows"`` (one HVP row per parameter entry, batched;
            works on any graph), ``"propagate"`` (curvature propagation, see
            :mod:`gradgraph.derivatives.propagation`; raises
            :class:`UnsupportedOpError` naming an op without a rule),
            ``"xdiag"`` or ``"hutchinson"`` (estimates from ``matvecs`` HVPs;
            see :mod:`gradgraph.derivatives.estimate`). ``"auto"`` is the
            deprecated name of ``"exact"``.
        matvecs: HVPs an estimator may spend.
        seed: ``torch.Generator`` or int seed for the estimators (formerly
            ``generator=``).
        batch_size: rows per vmapped backward for ``"rows"``.
        allow_unused: zeros for parameters the loss does not depend on.
        progress: a tqdm bar for long runs (default on).

    Example:
        >>> w = torch.tensor([1.0, 2.0], requires_grad=True)
        >>> hessian_diagonal((w.prod() + w ** 3).sum(), {"w": w})
        {'w': tensor([ 6., 12.])}
    """
    op = _operator(loss, params, allow_unused, progress)
    return op.diagonal(method, matvecs, seed, batch_size=batch_size)


@renamed_keyword("generator", "seed")
def hessian_trace(
    loss: torch.Tensor | HessianOperator,
    params: Any = None,
    method: str = "xtrace",
    *,
    matvecs: int = 64,
    seed: Seed = None,
    allow_unused: bool | None = None,
    progress: bool | None = None,
) -> torch.Tensor:
    """The trace of the Hessian, exact or estimated from ``matvecs`` HVPs.

    Args:
        loss, params, allow_unused, progress: as in :func:`hessian_diagonal`.
        method: ``"xtrace"`` (default), ``"hutch++"``, ``"hutchinson"``, or
            ``"exact"`` (the sum of ``hessian_diagonal(method="exact")``).
        matvecs: HVPs an estimator may spend.
        seed: ``torch.Generator`` or int seed (formerly ``generator=``).

    Returns:
        A 0-dim tensor.

    Example:
        >>> x = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
        >>> round(float(hessian_trace((x ** 3).sum(), x, method="exact")), 10)
        18.0
    """
    op = _operator(loss, params, allow_unused, progress)
    return op.trace(method, matvecs, seed)


@renamed_keyword("generator", "seed")
def hessian_eigenvalues(
    loss: torch.Tensor | HessianOperator,
    params: Any = None,
    k: int = 1,
    which: str = "LA",
    *,
    tol: float = 1e-8,
    max_matvecs: int | None = None,
    seed: Seed = None,
    allow_unused: bool | None = None,
    progress: bool | None = None,
) -> tuple[torch.Tensor, list[Any]]:
    """``k`` extreme Hessian eigenvalues and eigenvectors by Lanczos.

    Args:
        loss, params, allow_unused, progress: as in :func:`hessian_diagonal`.
        k: how many.
        which: ``"LA"`` largest, ``"SA"`` smallest (most negative), ``"LM"``
            largest magnitude, ``"SM"`` smallest magnitude.
        tol: stop when each Ritz pair's residual is below ``tol * |value|``
            (then an eigenvalue lies within that distance).
        max_matvecs: HVP budget (default ``min(n, max(300, 20 k))``).
        seed: ``torch.Generator`` or int seed for the start vector (formerly
            ``generator=``).

    Returns:
        ``(values, vectors)``: a ``(k,)`` tensor in ``which`` order, and a
        list of ``k`` unit eigenvectors, each in the form of ``params`` (so
        ``hvp(loss, params, vectors[i])`` is ``values[i] * vectors[i]``).
    """
    op = _operator(loss, params, allow_unused, progress)
    return op.eigenvalues(k, which, tol=tol, max_matvecs=max_matvecs, seed=seed)


@renamed_keyword("generator", "seed")
def hessian_density(
    loss: torch.Tensor | HessianOperator,
    params: Any = None,
    *,
    probes: int = 8,
    steps: int = 64,
    seed: Seed = None,
    allow_unused: bool | None = None,
    progress: bool | None = None,
) -> SpectralDensity:
    """The Hessian's spectral density by stochastic Lanczos quadrature.

    Costs ``probes * steps`` HVPs. Plot it with ``.plot()`` (matplotlib) or
    evaluate it with ``.evaluate(grid, sigma)``. ``seed``: as in
    :func:`hessian_trace`; others as in :func:`hessian_diagonal`.

    Example:
        >>> x = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
        >>> d = hessian_density((x ** 3).sum(), x, probes=4, steps=2, seed=0)
        >>> round(float(d.moment(1)), 6)  # trace / n = (6 + 12) / 2
        9.0
    """
    op = _operator(loss, params, allow_unused, progress)
    return op.density(probes, steps, seed)
