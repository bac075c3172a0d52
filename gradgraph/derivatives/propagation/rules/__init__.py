"""One module per family of curvature rules; importing this package registers them.

Example:
    >>> from gradgraph.derivatives.propagation.registry import rule_for
    >>> rule_for("ConvolutionBackward0") is not None
    True
"""

from . import (
    activations,  # noqa: F401
    attention,  # noqa: F401
    elementwise,  # noqa: F401
    indexing,  # noqa: F401
    linalg,  # noqa: F401
    loss,  # noqa: F401
    normalization,  # noqa: F401
    recurrent,  # noqa: F401
    reparametrization,  # noqa: F401
    shape,  # noqa: F401
    spatial,  # noqa: F401
)
