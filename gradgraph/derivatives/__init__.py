"""The derivative engine: higher-order derivatives, HVPs, Hessians, estimators."""

from .hvp import hvp

__all__ = ["hvp"]
