"""The exact Hessian diagonal by curvature propagation through the autograd graph.

:mod:`.engine` sweeps the graph once from the loss to the parameters;
:mod:`.columns` holds the Hessian factor columns it carries; every op's
rule (:mod:`.base` for the interface) lives in one module per family under
:mod:`.rules` and registers itself by grad_fn name (:mod:`.registry`).
Importing this package registers every rule.

Example:
    >>> import torch
    >>> w = torch.tensor([1.0, -2.0], requires_grad=True)
    >>> propagated_hessian_diagonal((w * w * w).sum(), w)  # 6 w
    tensor([  6., -12.])
"""

from . import rules  # noqa: F401  (registers every rule)
from .base import UnsupportedOpError
from .engine import (
    diagonal_by_propagation,
    diagonal_method,
    ggn_diagonal,
    propagated_hessian_diagonal,
    propagation_obstacles,
    unsupported_ops,
)

__all__ = [
    "UnsupportedOpError",
    "diagonal_by_propagation",
    "diagonal_method",
    "ggn_diagonal",
    "propagated_hessian_diagonal",
    "propagation_obstacles",
    "unsupported_ops",
]
