"""The derivative engine: higher-order derivatives, HVPs, Hessians, estimators."""

from .curvature import Curvature
from .estimate import (
    SpectralDensity,
    diagonal_estimate,
    lanczos_eigenvalues,
    spectral_density,
    trace_estimate,
)
from .hvp import hvp

__all__ = [
    "Curvature",
    "SpectralDensity",
    "diagonal_estimate",
    "hvp",
    "lanczos_eigenvalues",
    "spectral_density",
    "trace_estimate",
]
