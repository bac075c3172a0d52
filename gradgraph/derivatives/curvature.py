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
    >>> bool(curv.trace(method="exact") > 0)
    True
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

import torch

from ..blockers import math_attention
from .allreduce import same_seed, sum_across_ranks, world
from .model_state import buffers_restored
from .operator import BatchLoss, HessianOperator
from .params import check_scalar_loss


class Curvature(HessianOperator):
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

    A :class:`~gradgraph.derivatives.operator.HessianOperator`: ``diagonal``,
    ``trace``, ``eigenvalues``, ``density``, ``hvp``, ``gradient``, ``loss``
    and the scipy ``LinearOperator`` interface come from there, each product one
    pass over the data (all ranks take part: call them on every rank in the
    same order).
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
        super().__init__(params, progress=progress, allow_unused=allow_unused)
        self.model = model
        self.loss_fn = loss_fn
        self.data = data
        self.timeout = timeout

    # ---- where the batches come from, and how ranks combine --------------------

    def _sources(self) -> Iterable[Any]:
        return self.data

    def _batch(self, source: Any, index: int) -> BatchLoss:
        loss, size = self._batch_loss(source, index)
        return BatchLoss(loss, size, self.params, self.allow_unused)

    def _sum_over_ranks(self, payload: torch.Tensor) -> torch.Tensor:
        return sum_across_ranks(payload, timeout=self.timeout)

    def _shared_seed(self, seed: torch.Generator | int | None) -> Any:
        if isinstance(seed, torch.Generator):
            return seed  # the caller seeds it alike on every rank
        return same_seed(seed, self.device)

    def _show_progress(self) -> bool:
        return self.progress and world()[0] == 0

    def _pass_context(self) -> AbstractContextManager:
        """Each pass leaves the model's buffers (BatchNorm statistics) as they were."""
        return buffers_restored(self.model)

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
            with math_attention():  # an attention kernel torch can differentiate twice
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
