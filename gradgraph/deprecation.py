"""Old spellings that still work for one release, with a DeprecationWarning.

A renamed keyword argument is declared once on the function that took it,
``@renamed_keyword("generator", "seed")``: a call with the old name warns and
passes the value on under the new one; a call with both is a TypeError.

Example:
    >>> import warnings
    >>> @renamed_keyword("generator", "seed")
    ... def draw(*, seed=None):
    ...     return seed
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     value = draw(generator=3)
    >>> value, caught[0].category.__name__
    (3, 'DeprecationWarning')
    >>> print(caught[0].message)
    draw(generator=...) is deprecated and will be removed in 0.3; pass seed= instead.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["REMOVED_IN", "renamed_keyword", "warn_renamed"]

REMOVED_IN = "0.3"
"""The release that drops the old spellings (they work through 0.2)."""

F = TypeVar("F", bound=Callable[..., Any])


def warn_renamed(old: str, new: str, where: str) -> None:
    """Warn that ``old`` (in ``where``) is now spelled ``new``."""
    warnings.warn(
        f"{where}({old}=...) is deprecated and will be removed in {REMOVED_IN}; "
        f"pass {new}= instead.",
        DeprecationWarning,
        stacklevel=3,
    )


def renamed_keyword(old: str, new: str) -> Callable[[F], F]:
    """Accept keyword ``old`` as ``new``, with a DeprecationWarning."""

    def decorate(function: F) -> F:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if old in kwargs:
                if new in kwargs:
                    raise TypeError(
                        f"{function.__name__}() got both {old}= and {new}=; "
                        f"pass only {new}= ({old}= is its deprecated spelling)."
                    )
                warn_renamed(old, new, function.__name__)
                kwargs[new] = kwargs.pop(old)
            return function(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate
