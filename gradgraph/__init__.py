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
    derivatives,
    hessian,
    hessian_blocks,
    hessian_density,
    hessian_diagonal,
    hessian_eigenvalues,
    hessian_operator,
    hessian_trace,
    hvp,
)
from .graph import GradGraph, trace
from .render.dot import DotNotFoundError

__all__ = [
    "DotNotFoundError",
    "GradGraph",
    "SpectralDensity",
    "derivatives",
    "hessian",
    "hessian_blocks",
    "hessian_density",
    "hessian_diagonal",
    "hessian_eigenvalues",
    "hessian_operator",
    "hessian_trace",
    "hvp",
    "trace",
]
__version__ = "0.1.0"
