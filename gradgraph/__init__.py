"""gradgraph: see, query and differentiate through PyTorch's autograd graph.

Example:
    >>> import torch, gradgraph
    >>> lin = torch.nn.Linear(3, 3)
    >>> g = gradgraph.trace(lin(torch.ones(1, 3)), model=lin)
    >>> g.summary()["by_op"]
    {'AccumulateGrad': 2, 'AddmmBackward0': 1, 'TBackward0': 1}
"""

from .derivatives import hvp
from .graph import GradGraph, trace
from .modules import record_modules
from .render.dot import DotNotFoundError
from .render.dropin import make_dot

__all__ = [
    "DotNotFoundError",
    "GradGraph",
    "hvp",
    "make_dot",
    "record_modules",
    "trace",
]
__version__ = "0.1.0"
