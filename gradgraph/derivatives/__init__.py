"""The derivative engine: higher-order derivatives, HVPs, Hessians, estimators."""

from .curvature import Curvature
from .hvp import hvp

__all__ = ["Curvature", "hvp"]
