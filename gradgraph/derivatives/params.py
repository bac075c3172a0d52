"""Parameters in, results out in the same form: a Module, a dict, a list or a tensor.

Every derivative function accepts ``params`` as an ``nn.Module`` (its
parameters that require grad, named by ``named_parameters()``), a dict
``name -> tensor``, a list/tuple of tensors, or one tensor, and returns results
in the matching form: a dict for a Module or dict, a list for a list, a tensor
for a tensor. :class:`ParamSet` does that conversion in one place, and also
flattens to and from one vector for matrix-free methods.

Example:
    >>> import torch
    >>> ps = as_params(torch.nn.Linear(2, 1))
    >>> ps.names, ps.numel
    (['weight', 'bias'], 3)
    >>> ps.pack([torch.zeros(1, 2), torch.zeros(1)])["bias"].shape
    torch.Size([1])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..blockers import second_order_failure


@dataclass(frozen=True)
class ParamSet:
    """The tensors to differentiate with respect to, and how to give results back."""

    names: list[str]
    tensors: list[torch.Tensor]
    form: str  # "dict", "list" or "tensor"

    @property
    def numel(self) -> int:
        return sum(t.numel() for t in self.tensors)

    @property
    def shapes(self) -> list[torch.Size]:
        return [t.shape for t in self.tensors]

    def pack(self, values: Sequence[Any]) -> Any:
        """Per-parameter ``values`` in the form the user gave ``params`` in."""
        values = list(values)
        if self.form == "dict":
            return dict(zip(self.names, values, strict=True))
        if self.form == "tensor":
            return values[0]
        return values

    def flatten(self, values: Sequence[torch.Tensor]) -> torch.Tensor:
        """One vector from per-parameter tensors (in ``names`` order)."""
        return torch.cat([v.reshape(-1) for v in values])

    def unflatten(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """Per-parameter views of one vector."""
        sizes = [t.numel() for t in self.tensors]
        return [
            part.view(t.shape)
            for part, t in zip(flat.split(sizes), self.tensors, strict=True)
        ]

    def flatten_batch(self, values: Sequence[torch.Tensor]) -> torch.Tensor:
        """``(k, numel)`` from per-parameter tensors with a leading batch dim ``k``."""
        return torch.cat([v.reshape(v.shape[0], -1) for v in values], dim=1)

    def unflatten_batch(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """Per-parameter ``(k, *shape)`` views of a ``(k, numel)`` block."""
        sizes = [t.numel() for t in self.tensors]
        return [
            part.reshape(flat.shape[0], *t.shape)
            for part, t in zip(flat.split(sizes, dim=1), self.tensors, strict=True)
        ]

    def check_uniform(self) -> None:
        """Raise unless all tensors share one dtype and device (one flat vector)."""
        kinds = {(t.dtype, t.device) for t in self.tensors}
        if len(kinds) > 1:
            raise ValueError(
                "matrix-free methods flatten all parameters into one vector, but "
                f"they mix dtypes/devices {sorted(map(str, kinds))}; convert the "
                "model with .to(dtype, device) first."
            )

    def like(self) -> torch.Tensor:
        """A zero vector with the parameters' total size, dtype and device."""
        first = self.tensors[0]
        return torch.zeros(self.numel, dtype=first.dtype, device=first.device)


def as_params(params: Any) -> ParamSet:
    """Normalise ``params`` (Module, dict, list/tuple or tensor) to a ParamSet.

    Raises:
        TypeError: for anything else, or entries that are not tensors.
        ValueError: when there are no parameters, or one does not require grad.
    """
    if isinstance(params, torch.nn.Module):
        named = [(n, p) for n, p in params.named_parameters() if p.requires_grad]
        form = "dict"
    elif isinstance(params, Mapping):
        named = [(str(k), v) for k, v in params.items()]
        form = "dict"
    elif isinstance(params, torch.Tensor):
        named = [("params", params)]
        form = "tensor"
    elif isinstance(params, Sequence) and not isinstance(params, str):
        named = [(f"params[{i}]", v) for i, v in enumerate(params)]
        form = "list"
    else:
        raise TypeError(
            "params must be an nn.Module, a dict name -> tensor, a list of tensors "
            f"or a tensor, got {type(params).__name__}."
        )
    if not named:
        raise ValueError(
            "params is empty: pass the tensors (or the Module) to differentiate "
            "with respect to; for a Module, check that some parameters require grad."
        )
    for name, tensor in named:
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(
                f"params entry {name!r} is a {type(tensor).__name__}, not a tensor."
            )
        if not tensor.requires_grad:
            raise ValueError(
                f"params entry {name!r} does not require grad; call "
                ".requires_grad_() on it before computing the loss."
            )
        if tensor.is_meta:
            raise ValueError(
                f"params entry {name!r} is on the meta device and has no values to "
                "differentiate; materialise it first, e.g. model.to_empty(device="
                "'cpu') and load the weights, then recompute the loss."
            )
    return ParamSet([n for n, _ in named], [t for _, t in named], form)


def check_not_inference_mode() -> None:
    """Raise inside ``torch.inference_mode()``: autograd builds no graph there,
    so every derivative would come out as zeros."""
    if torch.is_inference_mode_enabled():
        raise RuntimeError(
            "gradgraph cannot differentiate inside torch.inference_mode(): no "
            "graph is recorded there, so derivatives would all be zero; call it "
            "outside the inference_mode() block."
        )


def check_scalar_loss(loss: Any) -> None:
    """Raise a clear error unless ``loss`` is a scalar tensor with a graph."""
    check_not_inference_mode()
    if not isinstance(loss, torch.Tensor):
        raise TypeError(f"loss must be a tensor, got {type(loss).__name__}.")
    if loss.numel() != 1:
        raise ValueError(
            f"loss must be a scalar, got shape {tuple(loss.shape)}; reduce it "
            "first, e.g. loss.sum() or loss.mean()."
        )
    if loss.grad_fn is None and not loss.requires_grad:
        raise ValueError(
            "loss has no autograd graph (it does not require grad); compute it from "
            "the parameters outside torch.no_grad() and torch.inference_mode()."
        )


def _all_finite(parts: list[torch.Tensor]) -> bool:
    """One fused check (the largest magnitude per tensor) instead of one per tensor."""
    floats = [p for p in parts if p.is_floating_point()]
    if not floats:
        return True
    peaks = torch._foreach_norm(floats, float("inf"))
    return bool(torch.stack(peaks).isfinite().all())


def as_vector(
    vector: Any, params: ParamSet, what: str = "vector", check_finite: bool = True
) -> list[torch.Tensor]:
    """Per-parameter tensors from ``vector`` given in any params form, checked.

    Accepts the same forms as ``params`` (a dict with the same keys, a list in
    the same order, one tensor) or one flat vector of ``params.numel`` entries.
    ``check_finite=False`` skips the NaN/infinity check (for autograd's output).
    """
    if isinstance(vector, Mapping):
        missing = set(params.names) - set(map(str, vector))
        if missing:
            raise ValueError(f"{what} lacks entries for {sorted(missing)}.")
        parts = [vector[n] for n in params.names]
    elif isinstance(vector, torch.Tensor):
        if params.form == "tensor" and vector.shape == params.tensors[0].shape:
            parts = [vector]
        elif vector.dim() == 1 and vector.numel() == params.numel:
            parts = params.unflatten(vector)
        else:
            raise ValueError(
                f"{what} has shape {tuple(vector.shape)}; expected the parameters' "
                f"shapes or one flat vector of {params.numel} entries."
            )
    elif isinstance(vector, Sequence) and not isinstance(vector, str):
        parts = list(vector)
        if len(parts) != len(params.tensors):
            raise ValueError(
                f"{what} has {len(parts)} entries for {len(params.tensors)} parameters."
            )
    else:
        raise TypeError(
            f"{what} must be a tensor, a list or a dict of tensors, got "
            f"{type(vector).__name__}."
        )
    for name, part, param in zip(params.names, parts, params.tensors, strict=True):
        if not isinstance(part, torch.Tensor):
            raise TypeError(
                f"{what}[{name!r}] is a {type(part).__name__}, not a tensor."
            )
        if part.shape != param.shape:
            raise ValueError(
                f"{what}[{name!r}] has shape {tuple(part.shape)}, the parameter has "
                f"{tuple(param.shape)}."
            )
        if part.dtype != param.dtype:
            raise ValueError(
                f"{what}[{name!r}] is {part.dtype}, the parameter is {param.dtype}; "
                "convert it with .to(param.dtype)."
            )
        if part.device != param.device:
            raise ValueError(
                f"{what}[{name!r}] is on {part.device}, the parameter on "
                f"{param.device}; move it with .to(param.device)."
            )
    if check_finite and not _all_finite(parts):
        bad = [
            n
            for n, p in zip(params.names, parts, strict=True)
            if p.is_floating_point() and not bool(torch.isfinite(p).all())
        ]
        raise ValueError(
            f"{what}{bad} contains NaN or infinity; pass finite values "
            "(e.g. torch.nan_to_num(v))."
        )
    return parts


REENTRANT_CHECKPOINT_HINT = (
    " The loss's graph goes through a reentrant torch.utils.checkpoint "
    "(CheckpointFunctionBackward), which hides the parameters inside it from "
    "autograd.grad; checkpoint with use_reentrant=False instead."
)


def unused_hint(loss: torch.Tensor) -> str:
    """Why parameters may look unused: a reentrant checkpoint hides them."""
    stack, seen = [getattr(loss, "grad_fn", None)], set()
    while stack:
        fn = stack.pop()
        if fn is None or id(fn) in seen:
            continue
        if fn.name() == "CheckpointFunctionBackward":
            return REENTRANT_CHECKPOINT_HINT
        seen.add(id(fn))
        stack.extend(child for child, _ in fn.next_functions)
    return ""


def grad_checked(
    outputs: torch.Tensor | Sequence[torch.Tensor],
    params: ParamSet,
    *,
    grad_outputs: torch.Tensor | Sequence[torch.Tensor] | None = None,
    create_graph: bool = False,
    retain_graph: bool | None = None,
    allow_unused: bool = False,
) -> list[torch.Tensor]:
    """``torch.autograd.grad`` with gradgraph's error messages.

    Unused parameters give zeros when ``allow_unused`` is set, else a ValueError
    naming them; a freed graph gives a ValueError that explains retain_graph.
    """
    try:
        grads = torch.autograd.grad(
            outputs,
            params.tensors,
            grad_outputs=grad_outputs,
            create_graph=create_graph,
            retain_graph=retain_graph,
            allow_unused=True,
        )
    except RuntimeError as exc:
        if (failure := second_order_failure(exc)) is not None:
            raise failure from exc
        if "backward through the graph a second time" in str(exc):
            raise ValueError(
                "the loss's graph was already freed by an earlier backward() or "
                "autograd.grad(); recompute the loss, or pass retain_graph=True to "
                "the earlier call."
            ) from exc
        raise
    unused = [n for n, g in zip(params.names, grads, strict=True) if g is None]
    if unused and not allow_unused:
        raise ValueError(
            f"the loss does not depend on {unused}; pass allow_unused=True to get "
            "zeros for them, or leave them out of params."
            + (unused_hint(outputs) if isinstance(outputs, torch.Tensor) else "")
        )
    return [
        torch.zeros_like(p) if g is None else g
        for g, p in zip(grads, params.tensors, strict=True)
    ]
