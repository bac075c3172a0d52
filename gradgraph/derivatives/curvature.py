"""Curvature(model, loss_fn, data): Hessian quantities of the mean loss over a dataset.

The loss over a dataset is the mean over its samples; with ``loss_fn`` giving
the mean over one batch of ``n_b`` samples, that is
``L = sum_b n_b L_b / N`` and its Hessian ``H = sum_b n_b H_b / N``. Every
quantity here is computed batch by batch in that way: one batch's graph lives
at a time, so memory does not grow with the dataset, and uneven last batches
are weighted exactly.

When ``torch.distributed`` is initialised, each rank goes through the data it
was given (its shard), and the weighted sums and sample counts are all-reduced,
so every rank returns the global value. Random probes come from a seed shared
by all ranks. A ``DistributedSampler`` pads the shards with repeated samples
when the dataset size is not a multiple of the world size (which shifts the
mean slightly); ``Subset(dataset, range(rank, len(dataset), world_size))``
does not. With gloo, a dead or hung peer makes the others raise a
RuntimeError within ``timeout``; with nccl, a collective that never completes
is ended by NCCL's watchdog after the process group's timeout.

Example:
    >>> import torch
    >>> _ = torch.manual_seed(0)
    >>> model = torch.nn.Linear(2, 1)
    >>> data = [(torch.randn(3, 2), torch.randn(3, 1)) for _ in range(2)]
    >>> curv = Curvature(model, torch.nn.functional.mse_loss, data, progress=False)
    >>> curv.dim
    3
    >>> curv.trace(method="exact") > 0
    True
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator
from tqdm.auto import tqdm

from .allreduce import same_seed, sum_across_ranks, world
from .estimate import (
    PROGRESS_DELAY_S,
    SpectralDensity,
    diagonal_estimate,
    lanczos_eigenvalues,
    spectral_density,
    trace_estimate,
)
from .hessian import DIAGONAL_METHODS
from .hvp import flat_hvp
from .model_state import buffers_restored
from .params import as_params, as_vector, check_scalar_loss, grad_checked

PerBatch = Callable[[torch.Tensor], torch.Tensor]


class Curvature:
    """Hessian quantities of the mean of ``loss_fn(model(inputs), targets)`` over data.

    Args:
        model: a callable (usually an ``nn.Module``) applied to each batch's
            inputs: ``model(x)`` for a tensor, ``model(*x)`` for a tuple/list,
            ``model(**x)`` for a dict.
        loss_fn: ``loss_fn(outputs, targets)`` -> scalar, the MEAN over the batch
            (e.g. ``mse_loss``/``cross_entropy`` with their default reduction).
        data: a re-iterable of ``(inputs, targets)`` batches, e.g. a DataLoader
            or a list; it is gone through once per pass. Under
            ``torch.distributed``, each rank's own shard.
        params: what to differentiate with respect to (Module, dict, list or
            tensor, as everywhere in gradgraph); default: ``model``'s parameters
            that require grad. Results come back in this form.
        progress: show a tqdm bar (on rank 0 only).
        timeout: seconds to wait for the other ranks in each all-reduce; None
            uses the process group's timeout. Ignored without torch.distributed.
        allow_unused: give zeros for parameters the loss does not depend on
            instead of raising.

    The model is used as it is: call ``model.eval()`` first when it has
    dropout or batch norm, or each pass sees a different function.
    """

    def __init__(
        self,
        model: Callable[..., Any],
        loss_fn: Callable[[Any, Any], torch.Tensor],
        data: Iterable[Any],
        params: Any = None,
        *,
        progress: bool = True,
        timeout: float | None = None,
        allow_unused: bool = False,
    ) -> None:
        if not callable(model):
            raise TypeError(f"model must be callable, got {type(model).__name__}.")
        if not callable(loss_fn):
            raise TypeError(
                f"loss_fn must be callable as loss_fn(outputs, targets), got "
                f"{type(loss_fn).__name__}."
            )
        if not isinstance(data, Iterable) or isinstance(data, (str, torch.Tensor)):
            raise TypeError(
                "data must be an iterable of (inputs, targets) batches such as a "
                f"DataLoader or a list, got {type(data).__name__}."
            )
        if iter(data) is data:
            raise TypeError(
                "data is a one-shot iterator (a generator?), but Curvature goes "
                "through the data once per pass; pass a DataLoader or a list."
            )
        if params is None:
            if not isinstance(model, torch.nn.Module):
                raise TypeError(
                    "params is required when model is not an nn.Module; pass the "
                    "tensors to differentiate with respect to."
                )
            params = model
        if timeout is not None and not timeout > 0:
            raise ValueError(
                f"timeout must be a positive number of seconds or None, "
                f"got {timeout!r}."
            )
        self.model = model
        self.loss_fn = loss_fn
        self.data = data
        self.params = as_params(params)
        self.params.check_uniform()
        self.progress = progress
        self.timeout = timeout
        self.allow_unused = allow_unused
        first = self.params.tensors[0]
        self.dtype, self.device = first.dtype, first.device

    @property
    def dim(self) -> int:
        """The number of parameters: the Hessian is ``dim x dim``."""
        return self.params.numel

    # ---- one pass over the data ----------------------------------------------

    def _batch_loss(self, batch: Any, index: int) -> tuple[torch.Tensor, int]:
        """The scalar loss of one batch, with its graph, and the batch's size."""
        if not isinstance(batch, Sequence) or len(batch) != 2:
            raise TypeError(
                f"batch {index} is a {type(batch).__name__}; data must yield "
                "(inputs, targets) pairs."
            )
        inputs, targets = batch
        size = _batch_size(inputs, index)
        if isinstance(targets, torch.Tensor) and (
            targets.dim() == 0 or targets.shape[0] != size
        ):
            raise ValueError(
                f"batch {index} has {size} inputs but targets of shape "
                f"{tuple(targets.shape)}; the first dimension of both must be the "
                "batch size."
            )
        try:
            if isinstance(inputs, Mapping):
                outputs = self.model(**inputs)
            elif isinstance(inputs, (tuple, list)):
                outputs = self.model(*inputs)
            else:
                outputs = self.model(inputs)
        except torch.OutOfMemoryError:
            raise
        except RuntimeError as exc:
            raise ValueError(
                f"batch {index}: the model rejected inputs of shape "
                f"{_shapes(inputs)}; make the data match the model's input. "
                f"torch said: {exc}"
            ) from exc
        try:
            loss = self.loss_fn(outputs, targets)
        except torch.OutOfMemoryError:
            raise
        except (RuntimeError, IndexError) as exc:  # IndexError: class out of range
            raise ValueError(
                f"batch {index}: loss_fn rejected outputs of shape "
                f"{_shapes(outputs)} with targets of shape {_shapes(targets)}; make "
                f"the targets match the model's output. torch said: {exc}"
            ) from exc
        try:
            check_scalar_loss(loss)
        except (TypeError, ValueError) as exc:
            raise type(exc)(
                f"batch {index}: loss_fn(outputs, targets) must return the batch's "
                f"mean loss as a scalar tensor; {exc}"
            ) from exc
        return loss, size

    def _pass(self, per_batch: PerBatch, shape: tuple[int, ...], desc: str, bar: bool):
        """``sum_b n_b per_batch(L_b) / N`` over all batches of all ranks."""
        rank, _ = world()
        total = torch.zeros(shape, dtype=self.dtype, device=self.device)
        count = 0
        batches = tqdm(
            self.data,
            desc=desc,
            disable=not (bar and self.progress) or rank != 0,
            delay=PROGRESS_DELAY_S,
            leave=False,
        )
        try:
            with torch.enable_grad(), buffers_restored(self.model):
                for index, batch in enumerate(batches):
                    loss, size = self._batch_loss(batch, index)
                    total += size * per_batch(loss)
                    count += size
                    del loss
        finally:
            batches.close()
        payload = torch.cat(
            [
                total.reshape(-1).to(torch.float64),
                torch.tensor([count], dtype=torch.float64, device=self.device),
            ]
        )
        payload = sum_across_ranks(payload, timeout=self.timeout)
        count = int(payload[-1].item())
        if count == 0:
            raise ValueError(
                "the data yielded no samples (on any rank); pass a non-empty "
                "DataLoader or list of (inputs, targets) batches."
            )
        return (payload[:-1] / count).to(self.dtype).view(shape)

    # ---- public quantities -----------------------------------------------------

    def loss(self) -> float:
        """The mean loss over the dataset."""
        value = self._pass(lambda loss: loss.detach().reshape(1), (1,), "loss", True)
        return float(value.item())

    def gradient(self) -> Any:
        """The gradient of the mean loss, in the form of ``params``."""

        def per_batch(loss):
            grads = grad_checked(loss, self.params, allow_unused=self.allow_unused)
            return self.params.flatten(grads)

        return self.params.pack(
            self.params.unflatten(self._pass(per_batch, (self.dim,), "gradient", True))
        )

    def matvec(self, vector: torch.Tensor) -> torch.Tensor:
        """``H v`` for one flat vector of ``dim`` entries (the estimators' matvec)."""
        return self.matmat(vector.reshape(-1, 1)).reshape(-1)

    def matmat(self, matrix: torch.Tensor, bar: bool = False) -> torch.Tensor:
        """``H V`` for a ``dim x m`` matrix: one forward per batch for all m columns."""
        if matrix.dim() != 2 or matrix.shape[0] != self.dim:
            raise ValueError(
                f"expected a ({self.dim}, m) matrix, got shape {tuple(matrix.shape)}."
            )
        matrix = matrix.to(dtype=self.dtype, device=self.device)
        columns = list(matrix.t())

        def per_batch(loss):
            batch_matvec = flat_hvp(loss, self.params, allow_unused=self.allow_unused)
            return torch.stack([batch_matvec(c) for c in columns], dim=1)

        return self._pass(per_batch, (self.dim, matrix.shape[1]), "H V", bar)

    def hvp(self, vector: Any) -> Any:
        """``H v`` of the mean loss; ``v`` and the result in the form of ``params``.

        ``v`` may also be one flat vector of ``dim`` entries. Under
        torch.distributed, pass the same ``v`` on every rank.
        """
        flat = self.params.flatten(as_vector(vector, self.params))
        result = self.matmat(flat.reshape(-1, 1), bar=True).reshape(-1)
        return self.params.pack(self.params.unflatten(result))

    def operator(self) -> LinearOperator:
        """The Hessian as a scipy ``LinearOperator`` (float64 numpy in and out).

        Every product is one pass over the data (all ranks take part), so
        under torch.distributed call it on every rank in the same order.
        """

        def apply(x: np.ndarray) -> np.ndarray:
            block = torch.as_tensor(np.asarray(x, dtype=np.float64)).reshape(
                self.dim, -1
            )
            return self.matmat(block).cpu().to(torch.float64).numpy()

        return LinearOperator(
            (self.dim, self.dim),
            matvec=lambda x: apply(x).reshape(-1),
            matmat=apply,
            rmatvec=lambda x: apply(x).reshape(-1),
            dtype=np.float64,
        )

    # ---- estimators (gradgraph.derivatives.estimate on the dataset's matvec) -----

    def _options(self, seed: int | None) -> dict[str, Any]:
        """What every estimator gets: a seed shared by all ranks, dtype, device, bar."""
        rank, _ = world()
        return {
            "generator": same_seed(seed, self.device),
            "dtype": self.dtype,
            "device": self.device,
            "progress": self.progress and rank == 0,
        }

    def _exact_diagonal(self, desc: str) -> torch.Tensor:
        """The flat diagonal of each batch's Hessian, exactly (the fastest exact
        method of :func:`~gradgraph.hessian_diagonal`), averaged in one pass."""

        def per_batch(loss):
            exact = DIAGONAL_METHODS["auto"](
                loss, self.params, allow_unused=self.allow_unused, progress=False
            )
            return self.params.flatten(exact)

        return self._pass(per_batch, (self.dim,), desc, True)

    def diagonal(
        self, method: str = "exact", matvecs: int = 64, seed: int | None = None
    ) -> Any:
        """The Hessian's diagonal, in the form of ``params``.

        Args:
            method: ``"exact"`` (``dim`` batched HVP rows per batch, one pass),
                or an estimator of :func:`~gradgraph.derivatives.diagonal_estimate`
                (``"xdiag"``, ``"hutchinson"``), each product one pass.
            matvecs: products an estimator spends.
            seed: the estimators' random seed; None draws one on rank 0 and
                shares it, so every rank uses the same probes.
        """
        if method == "exact":
            flat = self._exact_diagonal("diagonal")
        else:
            flat = diagonal_estimate(
                self.matvec,
                self.dim,
                method=method,
                matvecs=matvecs,
                **self._options(seed),
            )
        return self.params.pack(self.params.unflatten(flat))

    def trace(
        self, method: str = "exact", matvecs: int = 64, seed: int | None = None
    ) -> float:
        """The Hessian's trace: ``"exact"`` (the exact diagonal's sum) or an
        estimator of :func:`~gradgraph.derivatives.trace_estimate` (``"xtrace"``,
        ``"hutch++"``, ``"hutchinson"``) spending ``matvecs`` passes."""
        if method == "exact":
            value = self._exact_diagonal("trace").sum()
        else:
            value = trace_estimate(
                self.matvec,
                self.dim,
                method=method,
                matvecs=matvecs,
                **self._options(seed),
            )
        return float(value.item())

    def eigenvalues(
        self,
        k: int = 1,
        which: str = "LA",
        *,
        tol: float = 1e-8,
        max_matvecs: int | None = None,
        seed: int | None = None,
    ) -> tuple[torch.Tensor, list[Any]]:
        """``k`` extreme eigenpairs by Lanczos (see
        :func:`~gradgraph.derivatives.lanczos_eigenvalues`).

        Returns:
            ``(values, vectors)``: ``(k,)`` values in ``which`` order and a list
            of ``k`` unit eigenvectors, each in the form of ``params``.
        """
        values, vectors = lanczos_eigenvalues(
            self.matvec,
            self.dim,
            k,
            which,
            tol=tol,
            max_matvecs=max_matvecs,
            **self._options(seed),
        )
        packed = [self.params.pack(self.params.unflatten(v)) for v in vectors.t()]
        return values, packed

    def density(
        self, probes: int = 8, steps: int = 64, seed: int | None = None
    ) -> SpectralDensity:
        """The spectral density by stochastic Lanczos quadrature
        (:func:`~gradgraph.derivatives.spectral_density`), ``probes * steps`` passes."""
        return spectral_density(
            self.matvec, self.dim, probes=probes, steps=steps, **self._options(seed)
        )


def _batch_size(inputs: Any, index: int) -> int:
    """The first dimension of the (first) input tensor."""
    first = inputs
    if isinstance(inputs, Mapping):
        first = next(iter(inputs.values()), None)
    elif isinstance(inputs, (tuple, list)):
        first = inputs[0] if inputs else None
    if not isinstance(first, torch.Tensor) or first.dim() == 0:
        raise TypeError(
            f"batch {index}: inputs must be a tensor (or a tuple/dict of tensors) "
            f"whose first dimension is the batch size, got {_shapes(inputs)}."
        )
    return int(first.shape[0])


def _shapes(inputs: Any) -> Any:
    if isinstance(inputs, torch.Tensor):
        return tuple(inputs.shape)
    if isinstance(inputs, Mapping):
        return {k: _shapes(v) for k, v in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        return [_shapes(v) for v in inputs]
    return type(inputs).__name__
