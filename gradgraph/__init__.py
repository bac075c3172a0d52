"""gradgraph: see, query and differentiate through PyTorch's autograd graph.

Example:
    >>> import torch, gradgraph
    >>> lin = torch.nn.Linear(3, 3)
    >>> g = gradgraph.trace(lin(torch.ones(1, 3)), model=lin)
    >>> g.summary()["by_op"]
    {'AccumulateGrad': 2, 'AddmmBackward0': 1, 'TBackward0': 1}
"""

from .blockers import Blocker, SecondOrderError, second_order_blockers
from .derivatives import (
    Curvature,
    HessianOperator,
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
from .expansion import expand, order_summary, trace_orders
from .gradflow import GradientFlow, gradient_flow
from .graph import GradGraph, trace
from .memory import memory_chart, render_memory
from .modules import record_modules
from .nonfinite import NonFiniteReport, find_nonfinite
from .recorder import record_backward, recording
from .render.dot import DotFailedError, DotNotFoundError
from .render.dropin import make_dot, make_dot_from_trace
from .retain import explain_retain_graph

__all__ = [
    "Blocker",
    "Curvature",
    "DotFailedError",
    "DotNotFoundError",
    "GradGraph",
    "HessianOperator",
    "GradientFlow",
    "NonFiniteReport",
    "SecondOrderError",
    "SpectralDensity",
    "UnsupportedOpError",
    "derivatives",
    "diagonal_method",
    "expand",
    "explain_retain_graph",
    "find_nonfinite",
    "ggn_diagonal",
    "gradient_flow",
    "hessian",
    "hessian_blocks",
    "hessian_density",
    "hessian_diagonal",
    "hessian_eigenvalues",
    "hessian_operator",
    "hessian_trace",
    "hvp",
    "make_dot",
    "make_dot_from_trace",
    "memory_chart",
    "order_summary",
    "propagated_hessian_diagonal",
    "record_backward",
    "record_modules",
    "recording",
    "render_memory",
    "second_order_blockers",
    "trace",
    "trace_orders",
    "unsupported_ops",
]
__version__ = "0.1.0"
