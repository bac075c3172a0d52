"""Summing one tensor across the processes of torch.distributed, or not at all.

gradgraph writes no distribution layer of its own: when the default process
group of ``torch.distributed`` is initialised (gloo on CPU, nccl on GPUs, set up
by the user or by ``torchrun``), :func:`sum_across_ranks` all-reduces with it;
otherwise it returns the tensor unchanged. A peer that died or hangs makes the
collective fail; that failure comes back as a RuntimeError which says so,
within ``timeout`` seconds (or the process group's own timeout).

Example:
    >>> import torch
    >>> sum_across_ranks(torch.tensor([1.0, 2.0]))  # no process group: unchanged
    tensor([1., 2.])
    >>> world()
    (0, 1)
"""

from __future__ import annotations

from datetime import timedelta

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of the default process group, ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def sum_across_ranks(
    tensor: torch.Tensor, timeout: float | None = None
) -> torch.Tensor:
    """The element-wise sum of ``tensor`` over all ranks, on every rank.

    Args:
        tensor: the same shape and dtype on every rank, on a device the
            backend supports (CPU for gloo, CUDA for nccl).
        timeout: seconds to wait for the peers; None uses the timeout the
            process group was created with (``init_process_group(timeout=)``).

    Raises:
        RuntimeError: when a peer rank died, hangs past the timeout or sent a
            mismatching tensor; the message says so and keeps the backend's own.
    """
    rank, size = world()
    if size == 1:
        return tensor
    tensor = tensor.contiguous()
    try:
        work = dist.all_reduce(tensor, op=dist.ReduceOp.SUM, async_op=True)
        if timeout is None:
            work.wait()
        else:
            work.wait(timeout=timedelta(seconds=timeout))
    except RuntimeError as exc:
        raise RuntimeError(
            f"rank {rank} of {size}: the all-reduce across ranks failed, so a peer "
            "rank died, raised an error or stopped responding"
            + ("" if timeout is None else f" within {timeout:g} s")
            + "; look at the other ranks' output for the first error. "
            f"Backend said: {exc}"
        ) from exc
    return tensor


def same_seed(seed: int | None, device: torch.device | str = "cpu") -> int:
    """``seed``, or a fresh random one chosen by rank 0 and shared with all ranks.

    Random probes must be identical on every rank; a seed drawn on rank 0 and
    summed with zeros from the others gives every rank the same number.
    """
    if seed is not None:
        return int(seed)
    rank, _ = world()
    drawn = torch.randint(0, 2**62, (1,)) if rank == 0 else torch.zeros(1)
    return int(sum_across_ranks(drawn.to(torch.int64).to(device)).item())
