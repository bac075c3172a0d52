"""The Hessian as a matrix-free operator: trace, eigenvalues, spectral density.

Each function builds the gradient graph of ``loss`` once and then only asks
for Hessian-vector products (:func:`gradgraph.derivatives.hvp.flat_hvp`),
handing them to the estimators of :mod:`gradgraph.derivatives.estimate`.
``hessian_operator`` gives the same products as a ``scipy`` LinearOperator,
for ``scipy.sparse.linalg.eigsh``, ``cg`` or ``minres``.

Example:
    >>> import torch
    >>> x = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64, requires_grad=True)
    >>> values, vectors = hessian_eigenvalues((x ** 3).sum(), x, k=1)
    >>> values.round(decimals=6), vectors[0].abs().round(decimals=6)
    (tensor([18.], dtype=torch.float64), tensor([0., 0., 1.], dtype=torch.float64))
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .estimate import (
    SpectralDensity,
    lanczos_eigenvalues,
    spectral_density,
    trace_estimate,
)
from .hessian import DIAGONAL_METHODS
from .hvp import flat_hvp, hessian_matvec
from .params import as_params

__all__ = [
    "hessian_density",
    "hessian_eigenvalues",
    "hessian_operator",
    "hessian_trace",
]


def hessian_operator(loss: torch.Tensor, params: Any, *, allow_unused: bool = False):
    """The Hessian as a ``scipy.sparse.linalg.LinearOperator`` of HVPs.

    Vectors are flat numpy arrays over the parameters in order (a Module's
    ``named_parameters()`` order). The operator keeps the gradient graph
    alive until it is dropped.

    Example:
        >>> from scipy.sparse.linalg import eigsh
        >>> x = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
        >>> op = hessian_operator((x ** 3).sum(), x)
        >>> round(float(eigsh(op, k=1, which="LA")[0][0]), 9)  # ARPACK starts at random
        12.0
    """
    from scipy.sparse.linalg import LinearOperator

    ps = as_params(params)
    matvec = flat_hvp(loss, ps, allow_unused=allow_unused)
    first = ps.tensors[0]

    def apply(vector: np.ndarray) -> np.ndarray:
        v = torch.as_tensor(np.ascontiguousarray(vector).reshape(-1))
        out = matvec(v.to(dtype=first.dtype, device=first.device))
        return out.detach().cpu().numpy()

    numpy_dtype = torch.empty((), dtype=first.dtype).numpy().dtype
    return LinearOperator(
        (ps.numel, ps.numel), matvec=apply, rmatvec=apply, dtype=numpy_dtype
    )


def hessian_trace(
    loss: torch.Tensor,
    params: Any,
    method: str = "xtrace",
    *,
    matvecs: int = 64,
    generator: torch.Generator | int | None = None,
    allow_unused: bool = False,
    progress: bool = True,
) -> torch.Tensor:
    """The trace of the Hessian, exact or estimated from ``matvecs`` HVPs.

    Args:
        method: ``"xtrace"`` (default), ``"hutch++"``, ``"hutchinson"``, or
            ``"exact"`` (the sum of ``hessian_diagonal(method="auto")``).
        matvecs: HVPs an estimator may spend.
        generator: ``torch.Generator`` or int seed.

    Returns:
        A 0-dim tensor.

    Example:
        >>> x = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
        >>> round(float(hessian_trace((x ** 3).sum(), x, method="exact")), 10)
        18.0
    """
    ps = as_params(params)
    if method == "exact":
        diagonal = DIAGONAL_METHODS["auto"](
            loss, ps, allow_unused=allow_unused, progress=progress
        )
        return sum(d.sum() for d in diagonal)
    return trace_estimate(
        **hessian_matvec(loss, ps, allow_unused, progress),
        method=method,
        matvecs=matvecs,
        generator=generator,
    )


def hessian_eigenvalues(
    loss: torch.Tensor,
    params: Any,
    k: int = 1,
    which: str = "LA",
    *,
    tol: float = 1e-8,
    max_matvecs: int | None = None,
    generator: torch.Generator | int | None = None,
    allow_unused: bool = False,
    progress: bool = True,
) -> tuple[torch.Tensor, list[Any]]:
    """``k`` extreme Hessian eigenvalues and eigenvectors by Lanczos.

    Args:
        k: how many.
        which: ``"LA"`` largest, ``"SA"`` smallest (most negative), ``"LM"``
            largest magnitude, ``"SM"`` smallest magnitude.
        tol: stop when each Ritz pair's residual is below ``tol * |value|``
            (then an eigenvalue lies within that distance).
        max_matvecs: HVP budget (default ``min(n, max(300, 20 k))``).
        generator: ``torch.Generator`` or int seed for the start vector.

    Returns:
        ``(values, vectors)``: a ``(k,)`` tensor in ``which`` order, and a
        list of ``k`` unit eigenvectors, each in the form of ``params`` (so
        ``hvp(loss, params, vectors[i])`` is ``values[i] * vectors[i]``).
    """
    ps = as_params(params)
    values, columns = lanczos_eigenvalues(
        **hessian_matvec(loss, ps, allow_unused, progress),
        k=k,
        which=which,
        tol=tol,
        max_matvecs=max_matvecs,
        generator=generator,
    )
    vectors = [ps.pack(ps.unflatten(columns[:, i].contiguous())) for i in range(k)]
    return values, vectors


def hessian_density(
    loss: torch.Tensor,
    params: Any,
    *,
    probes: int = 8,
    steps: int = 64,
    generator: torch.Generator | int | None = None,
    allow_unused: bool = False,
    progress: bool = True,
) -> SpectralDensity:
    """The Hessian's spectral density by stochastic Lanczos quadrature.

    Costs ``probes * steps`` HVPs. Plot it with ``.plot()`` (matplotlib) or
    evaluate it with ``.evaluate(grid, sigma)``.

    Example:
        >>> x = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
        >>> d = hessian_density((x ** 3).sum(), x, probes=4, steps=2, generator=0)
        >>> round(float(d.moment(1)), 6)  # trace / n = (6 + 12) / 2
        9.0
    """
    ps = as_params(params)
    return spectral_density(
        **hessian_matvec(loss, ps, allow_unused, progress),
        probes=probes,
        steps=steps,
        generator=generator,
    )
