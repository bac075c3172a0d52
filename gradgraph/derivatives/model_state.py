"""Leave a model's buffers as they were: BatchNorm statistics and the like.

A model in training mode updates buffers as a side effect of its forward
(BatchNorm's ``running_mean``, ``running_var`` and ``num_batches_tracked``).
Passes over the data made to measure curvature are not training steps, so
:func:`buffers_restored` puts back every buffer a forward wrote to. The
numbers themselves do not change: in training mode BatchNorm normalises
with the batch's own statistics, not the running ones.

Example:
    >>> import torch
    >>> bn = torch.nn.BatchNorm1d(2)
    >>> with buffers_restored(bn):
    ...     _ = bn(torch.randn(4, 2))
    >>> int(bn.num_batches_tracked), bn.running_mean.tolist()
    (0, [0.0, 0.0])
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

__all__ = ["buffers_restored"]


@contextmanager
def buffers_restored(model: Any) -> Iterator[None]:
    """Restore every buffer of ``model`` (an ``nn.Module``) written inside the block.

    Only buffers that changed are copied back, so a graph that saved an
    untouched buffer (BatchNorm in eval mode) stays usable. Anything
    that is not an ``nn.Module`` is left alone.
    """
    if not isinstance(model, torch.nn.Module):
        yield
        return
    saved = [
        (buffer, buffer._version, buffer.detach().clone())
        for buffer in model.buffers()
        if not buffer.is_meta
    ]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, version, value in saved:
                # BatchNorm's kernel writes running stats without a version bump
                if buffer._version != version or not torch.equal(buffer, value):
                    buffer.copy_(value)
