"""gradgraph: see, query and differentiate through PyTorch's autograd graph.

Example:
    >>> import torch, gradgraph
    >>> lin = torch.nn.Linear(3, 3)
    >>> g = gradgraph.trace(lin(torch.ones(1, 3)), model=lin)
    >>> g.summary()["by_op"]
    {'AccumulateGrad': 2, 'AddmmBackward0': 1, 'TBackward0': 1}
"""

from .derivatives import (
    SpectralDensity,
    UnsupportedOpError,
    derivatives,
    diagonal_method,
    ggn_diagonal,
    hessian,
    hessian_blocks,
    hessian_density,
    hessian_diagonal,
    hessian_eigenvalues,
    hessian_operator,
    hessian_trace,
    hvp,
    propagated_hessian_diagonal,
    unsupported_ops,
)
from .graph import GradGraph, trace
from .render.dot import DotNotFoundError

__all__ = [
    "DotNotFoundError",
    "GradGraph",
    "SpectralDensity",
    "UnsupportedOpError",
    "derivatives",
    "diagonal_method",
    "ggn_diagonal",
    "hessian",
    "hessian_blocks",
    "hessian_density",
    "hessian_diagonal",
    "hessian_eigenvalues",
    "hessian_operator",
    "hessian_trace",
    "hvp",
    "propagated_hessian_diagonal",
    "trace",
    "unsupported_ops",
]
__version__ = "0.1.0"
