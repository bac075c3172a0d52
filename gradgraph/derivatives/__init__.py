"""The derivative engine: higher-order derivatives, HVPs, Hessians, estimators."""

from .curvature import Curvature
from .estimate import (
    SpectralDensity,
    diagonal_estimate,
    lanczos_eigenvalues,
    spectral_density,
    trace_estimate,
)
from .hessian import DIAGONAL_METHODS, hessian, hessian_blocks, hessian_diagonal
from .higher import derivatives
from .hvp import hvp
from .matrix_free import (
    hessian_density,
    hessian_eigenvalues,
    hessian_operator,
    hessian_trace,
)
from .propagation import (
    UnsupportedOpError,
    diagonal_method,
    ggn_diagonal,
    propagated_hessian_diagonal,
    unsupported_ops,
)

__all__ = [
    "DIAGONAL_METHODS",
    "Curvature",
    "SpectralDensity",
    "UnsupportedOpError",
    "derivatives",
    "diagonal_method",
    "diagonal_estimate",
    "ggn_diagonal",
    "hessian",
    "hessian_blocks",
    "hessian_density",
    "hessian_diagonal",
    "hessian_eigenvalues",
    "hessian_operator",
    "hessian_trace",
    "hvp",
    "lanczos_eigenvalues",
    "propagated_hessian_diagonal",
    "spectral_density",
    "trace_estimate",
    "unsupported_ops",
]
