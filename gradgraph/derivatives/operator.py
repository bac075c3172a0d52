"""HessianOperator: the Hessian of a mean loss over batches, one type for all.

The mean loss over ``N`` samples in batches of ``n_b`` is
``L = sum_b n_b L_b / N``, and its Hessian ``H = sum_b n_b H_b / N``. A loss
over one batch is a dataset of one batch: :func:`hessian_operator` wraps one
loss tensor, :class:`~gradgraph.Curvature` a model, a loss function and a
DataLoader; both are a :class:`HessianOperator` and share every computation
below. Each quantity is one or more passes over the batches, each a weighted
sum of per-batch values (one batch's graph alive at a time); a dataset spread
over ``torch.distributed`` ranks adds an all-reduce at the end of each pass.

What every operator gives, computed once here for both kinds:

- ``op.hvp(v)``, ``op.gradient()``, ``op.loss()``;
- ``op.diagonal(method)``: ``"exact"`` (the exact diagonal by the fastest
  exact route per batch, see :data:`~gradgraph.derivatives.DIAGONAL_METHODS`),
  ``"rows"``, ``"propagate"``, or an estimator (``"xdiag"``, ``"hutchinson"``);
- ``op.trace(method)``: ``"exact"`` (the exact diagonal's sum) or an
  estimator (``"xtrace"``, ``"hutch++"``, ``"hutchinson"``);
- ``op.eigenvalues(k, which)`` (Lanczos), ``op.density()`` (stochastic
  Lanczos quadrature);
- ``op @ v`` and ``op.matvec(v)`` on torch tensors (flat ``(dim,)`` or
  ``(dim, m)``), and, being a ``scipy.sparse.linalg.LinearOperator``, the same
  on numpy arrays for ``eigsh``, ``cg`` or ``minres``.

Example:
    >>> import torch
    >>> x = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
    >>> op = hessian_operator((x ** 3).sum(), x)  # H = diag(6 x)
    >>> op.diagonal("rows"), op.trace("exact").round(decimals=9)
    (tensor([ 6., 12.], dtype=torch.float64), tensor(18., dtype=torch.float64))
    >>> op @ torch.tensor([1.0, 1.0], dtype=torch.float64)
    tensor([ 6., 12.], dtype=torch.float64)
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator
from tqdm.auto import tqdm

from ..deprecation import warn_renamed
from .estimate import (
    DIAGONAL_ESTIMATORS,
    PROGRESS_DELAY_S,
    SpectralDensity,
    diagonal_estimate,
    lanczos_eigenvalues,
    spectral_density,
    trace_estimate,
)
from .hessian import DIAGONAL_METHODS
from .hvp import flat_hvp
from .params import ParamSet, as_params, as_vector, check_scalar_loss, grad_checked

__all__ = ["HessianOperator", "hessian_operator"]

Seed = torch.Generator | int | None


class BatchLoss:
    """One batch's scalar mean loss, its sample count, and (built on first use)
    the gradient graph its HVPs reuse."""

    def __init__(
        self, loss: torch.Tensor, size: int, params: ParamSet, allow_unused: bool
    ) -> None:
        self.loss, self.size = loss, size
        self._params, self._allow_unused = params, allow_unused
        self._matvec: Callable[[torch.Tensor], torch.Tensor] | None = None

    def matvec(self, vector: torch.Tensor) -> torch.Tensor:
        """``H_b v`` for one flat vector."""
        if self._matvec is None:
            self._matvec = flat_hvp(
                self.loss, self._params, allow_unused=self._allow_unused
            )
        return self._matvec(vector)


class HessianOperator(LinearOperator, ABC):
    """The Hessian of a mean loss over batches (see the module docstring).

    A subclass says where the batches come from (:meth:`_sources`,
    :meth:`_batch`) and how ranks combine (:meth:`_sum_over_ranks`,
    :meth:`_shared_seed`); everything else is here.
    """

    def __init__(self, params: Any, *, progress: bool, allow_unused: bool) -> None:
        self.params = as_params(params)
        self.params.check_uniform()
        self.progress = progress
        self.allow_unused = allow_unused
        first = self.params.tensors[0]
        self.tensor_dtype, self.device = first.dtype, first.device
        try:
            numpy_dtype = torch.empty((), dtype=first.dtype).numpy().dtype
        except TypeError:  # bfloat16 has no numpy dtype: scipy sees float32
            numpy_dtype = np.dtype(np.float32)
        super().__init__(dtype=numpy_dtype, shape=(self.dim, self.dim))

    @property
    def dim(self) -> int:
        """The number of parameters: the Hessian is ``dim x dim``."""
        return self.params.numel

    # ---- what a kind of operator says --------------------------------------------

    @abstractmethod
    def _sources(self) -> Iterable[Any]:
        """What one pass goes through (one item per batch)."""

    @abstractmethod
    def _batch(self, source: Any, index: int) -> BatchLoss:
        """The loss of the batch ``source`` (the ``index``-th of the pass)."""

    def _sum_over_ranks(self, payload: torch.Tensor) -> torch.Tensor:
        """Sum a pass's ``[weighted sums..., count]`` over ranks (none: as is)."""
        return payload

    def _shared_seed(self, seed: Seed) -> Seed:
        """The estimators' seed, the same on every rank."""
        return seed

    def _show_progress(self) -> bool:
        return self.progress

    def _pass_context(self) -> AbstractContextManager:
        """What a pass over the batches runs inside (nothing for one loss)."""
        return nullcontext()

    def _per_batch_progress(self) -> bool:
        """A bar inside each batch (worth it only when there is one batch)."""
        return False

    # ---- one pass over the batches -------------------------------------------------

    def _pass(
        self,
        per_batch: Callable[[BatchLoss], torch.Tensor],
        shape: tuple[int, ...],
        desc: str,
        bar: bool,
    ) -> torch.Tensor:
        """``sum_b n_b per_batch(b) / N`` over all batches (of all ranks)."""
        total = torch.zeros(shape, dtype=self.tensor_dtype, device=self.device)
        count = 0
        sources = tqdm(
            self._sources(),
            desc=desc,
            disable=not (bar and self._show_progress()),
            delay=PROGRESS_DELAY_S,
            leave=False,
        )
        try:
            with torch.enable_grad(), self._pass_context():
                for index, source in enumerate(sources):
                    batch = self._batch(source, index)
                    total += batch.size * per_batch(batch)
                    count += batch.size
                    del batch
        finally:
            sources.close()
        payload = torch.cat(
            [
                total.reshape(-1).to(torch.float64),
                torch.tensor([count], dtype=torch.float64, device=self.device),
            ]
        )
        payload = self._sum_over_ranks(payload)
        count = int(payload[-1].item())
        if count == 0:
            raise ValueError(
                "the data yielded no samples (on any rank); pass a non-empty "
                "DataLoader or list of (inputs, targets) batches."
            )
        return (payload[:-1] / count).to(self.tensor_dtype).view(shape)

    def _packed(self, flat: torch.Tensor) -> Any:
        return self.params.pack(self.params.unflatten(flat))

    # ---- products --------------------------------------------------------------

    def _apply(self, matrix: torch.Tensor, bar: bool = False) -> torch.Tensor:
        """``H V`` for a ``(dim, m)`` tensor: one pass for all ``m`` columns."""
        if matrix.dim() != 2 or matrix.shape[0] != self.dim:
            raise ValueError(
                f"expected a ({self.dim}, m) matrix, got shape {tuple(matrix.shape)}."
            )
        columns = list(matrix.to(dtype=self.tensor_dtype, device=self.device).t())

        def per_batch(batch: BatchLoss) -> torch.Tensor:
            return torch.stack([batch.matvec(c) for c in columns], dim=1)

        return self._pass(per_batch, (self.dim, matrix.shape[1]), "H V", bar)

    def _numpy(self, array: np.ndarray) -> np.ndarray:
        block = torch.as_tensor(np.ascontiguousarray(array)).reshape(self.dim, -1)
        return self._apply(block).detach().cpu().numpy()

    def _matvec(self, x: np.ndarray) -> np.ndarray:
        return self._numpy(x).reshape(-1)

    def _matmat(self, X: np.ndarray) -> np.ndarray:
        return self._numpy(X)

    _rmatvec = _matvec  # symmetric
    _rmatmat = _matmat

    def _adjoint(self) -> HessianOperator:
        return self

    _transpose = _adjoint

    def matvec(self, x: Any) -> Any:
        """``H x`` for a flat ``(dim,)`` torch tensor (the estimators' matvec) or a
        numpy array (scipy's)."""
        if isinstance(x, torch.Tensor):
            return self._apply(x.reshape(-1, 1)).reshape(-1)
        return super().matvec(x)

    def matmat(self, X: Any) -> Any:
        """``H X`` for a ``(dim, m)`` torch tensor or numpy array, one pass."""
        if isinstance(X, torch.Tensor):
            return self._apply(X)
        return super().matmat(X)

    def __matmul__(self, x: Any) -> Any:
        if isinstance(x, torch.Tensor):
            return self.matvec(x) if x.dim() == 1 else self.matmat(x)
        return super().__matmul__(x)

    def hvp(self, vector: Any) -> Any:
        """``H v``; ``v`` and the result in the form of ``params``.

        ``v`` may also be one flat vector of ``dim`` entries. Under
        torch.distributed, pass the same ``v`` on every rank.
        """
        flat = self.params.flatten(as_vector(vector, self.params))
        return self._packed(self._apply(flat.reshape(-1, 1), bar=True).reshape(-1))

    def operator(self) -> HessianOperator:
        """This operator (it already is a scipy ``LinearOperator``)."""
        return self

    # ---- the loss and its gradient ---------------------------------------------

    def loss(self) -> float:
        """The mean loss."""
        value = self._pass(
            lambda batch: batch.loss.detach().reshape(1), (1,), "loss", True
        )
        return float(value.item())

    def gradient(self) -> Any:
        """The gradient of the mean loss, in the form of ``params``."""

        def per_batch(batch: BatchLoss) -> torch.Tensor:
            grads = grad_checked(
                batch.loss, self.params, allow_unused=self.allow_unused
            )
            return self.params.flatten(grads)

        return self._packed(self._pass(per_batch, (self.dim,), "gradient", True))

    # ---- the estimators of gradgraph.derivatives.estimate on this operator ----------

    def _options(self, seed: Seed) -> dict[str, Any]:
        return {
            "seed": self._shared_seed(seed),
            "dtype": self.tensor_dtype,
            "device": self.device,
            "progress": self._show_progress(),
        }

    def _exact_diagonal(self, method: str, batch_size: int, desc: str) -> torch.Tensor:
        """The flat diagonal by an exact per-batch ``method``, in one pass."""
        exact = DIAGONAL_METHODS[method]

        def per_batch(batch: BatchLoss) -> torch.Tensor:
            diagonal = exact(
                batch.loss,
                self.params,
                batch_size=batch_size,
                allow_unused=self.allow_unused,
                progress=self._per_batch_progress(),
            )
            return self.params.flatten(diagonal)

        return self._pass(per_batch, (self.dim,), desc, True)

    def diagonal(
        self,
        method: str = "exact",
        matvecs: int = 64,
        seed: Seed = None,
        *,
        batch_size: int = 32,
    ) -> Any:
        """The Hessian's diagonal, in the form of ``params``.

        Args:
            method: ``"exact"`` (the exact diagonal: ``"propagate"`` where every
                op has a curvature rule, else ``"rows"``), ``"rows"`` (one
                batched HVP row per entry; any graph), ``"propagate"``
                (curvature propagation; raises
                :class:`~gradgraph.UnsupportedOpError` naming an op without a
                rule), or an estimator: ``"xdiag"``, ``"hutchinson"``.
            matvecs: products an estimator spends (each one pass).
            seed: the estimators' ``torch.Generator`` or int seed; None: a
                fresh one (under torch.distributed, drawn on rank 0 and shared).
            batch_size: rows per vmapped backward for ``"rows"``.
        """
        method = _current_method(method)
        if method in DIAGONAL_METHODS:
            flat = self._exact_diagonal(method, batch_size, "diagonal")
        elif method in DIAGONAL_ESTIMATORS:
            flat = diagonal_estimate(
                self.matvec,
                self.dim,
                method=method,
                matvecs=matvecs,
                **self._options(seed),
            )
        else:
            known = sorted(set(DIAGONAL_METHODS) | set(DIAGONAL_ESTIMATORS))
            raise ValueError(
                f"unknown diagonal method {method!r}; choose one of {known}."
            )
        return self._packed(flat)

    def trace(
        self,
        method: str = "exact",
        matvecs: int = 64,
        seed: Seed = None,
        *,
        batch_size: int = 32,
    ) -> torch.Tensor:
        """The Hessian's trace as a 0-dim tensor: ``"exact"`` (the exact
        diagonal's sum, as ``diagonal("exact")``) or an estimator of
        :func:`~gradgraph.derivatives.trace_estimate` (``"xtrace"``,
        ``"hutch++"``, ``"hutchinson"``) spending ``matvecs`` products."""
        if method == "exact":
            return self._exact_diagonal("exact", batch_size, "trace").sum()
        return trace_estimate(
            self.matvec, self.dim, method=method, matvecs=matvecs, **self._options(seed)
        )

    def eigenvalues(
        self,
        k: int = 1,
        which: str = "LA",
        *,
        tol: float = 1e-8,
        max_matvecs: int | None = None,
        seed: Seed = None,
    ) -> tuple[torch.Tensor, list[Any]]:
        """``k`` extreme eigenpairs by Lanczos (see
        :func:`~gradgraph.derivatives.lanczos_eigenvalues`).

        Returns:
            ``(values, vectors)``: ``(k,)`` values in ``which`` order and a list
            of ``k`` unit eigenvectors, each in the form of ``params`` (so
            ``op.hvp(vectors[i])`` is ``values[i] * vectors[i]``).
        """
        values, columns = lanczos_eigenvalues(
            self.matvec,
            self.dim,
            k,
            which,
            tol=tol,
            max_matvecs=max_matvecs,
            **self._options(seed),
        )
        return values, [self._packed(columns[:, i].contiguous()) for i in range(k)]

    def density(
        self, probes: int = 8, steps: int = 64, seed: Seed = None
    ) -> SpectralDensity:
        """The spectral density by stochastic Lanczos quadrature
        (:func:`~gradgraph.derivatives.spectral_density`), ``probes * steps``
        products."""
        return spectral_density(
            self.matvec, self.dim, probes=probes, steps=steps, **self._options(seed)
        )


def _current_method(method: str) -> str:
    """``"auto"`` is the old name of ``"exact"`` (same route, same numbers)."""
    if method == "auto":
        warn_renamed("method='auto'", "method='exact'", "diagonal")
        return "exact"
    return method


class _LossHessian(HessianOperator):
    """The Hessian of one loss tensor: a dataset of one batch, on this process."""

    def __init__(
        self, loss: torch.Tensor, params: Any, *, allow_unused: bool, progress: bool
    ) -> None:
        super().__init__(params, progress=progress, allow_unused=allow_unused)
        check_scalar_loss(loss)
        self._only = BatchLoss(loss, 1, self.params, allow_unused)

    def _sources(self) -> Iterable[Any]:
        return (None,)

    def _batch(self, source: Any, index: int) -> BatchLoss:
        return self._only

    def _per_batch_progress(self) -> bool:
        return self.progress


def hessian_operator(
    loss: torch.Tensor,
    params: Any,
    *,
    allow_unused: bool = False,
    progress: bool = True,
) -> HessianOperator:
    """The Hessian of a scalar ``loss`` as a :class:`HessianOperator`.

    Vectors are flat over the parameters in order (a Module's
    ``named_parameters()`` order); it is also a scipy ``LinearOperator`` on
    numpy arrays of the parameters' dtype. It keeps the loss's graph (and,
    after the first product, the gradient's) alive until it is dropped.

    Example:
        >>> from scipy.sparse.linalg import eigsh
        >>> x = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
        >>> op = hessian_operator((x ** 3).sum(), x)
        >>> round(float(eigsh(op, k=1, which="LA")[0][0]), 9)  # ARPACK starts at random
        12.0
    """
    return _LossHessian(loss, params, allow_unused=allow_unused, progress=progress)
