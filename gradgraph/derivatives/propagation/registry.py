"""The rule registry: which curvature rule handles which grad_fn class name.

A family module registers each rule for the grad_fn names it covers, either
as a call, ``register(Reshape(), "ViewBackward0", "UnsafeViewBackward0")``, or
as a class decorator, ``@register("TanhBackward0")`` (the class is built with
no arguments). A name registered twice is an error, so two families cannot
silently fight over an op. The engine looks rules up by name and knows no op
names itself.

Example:
    >>> from gradgraph.derivatives.propagation import registry
    >>> type(registry.rule_for("TanhBackward0")).__name__
    'Elementwise'
    >>> registry.rule_for("AtanBackward0") is None
    True
"""

from __future__ import annotations

from typing import Any

__all__ = ["register", "registered_names", "rule_for"]

_RULES: dict[str, Any] = {}


def _add(rule: Any, names: tuple[str, ...]) -> None:
    if not names:
        raise TypeError("register needs at least one grad_fn name, e.g. 'MmBackward0'")
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"grad_fn names are strings, got {name!r}")
        if name in _RULES:
            raise ValueError(
                f"{name} already has a curvature rule "
                f"({type(_RULES[name]).__name__}); a grad_fn name takes one rule: "
                "extend that rule or remove one of the registrations."
            )
    for name in names:
        _RULES[name] = rule


def register(rule: Any, *names: str) -> Any:
    """Register ``rule`` for the grad_fn class ``names``.

    ``register(rule_instance, *names)`` registers and returns the instance;
    ``register(RuleClass, *names)`` builds it with no arguments;
    ``@register(*names)`` on a class does the same and returns the class.

    Raises:
        ValueError: a name already has a rule.

    Example:
        >>> from gradgraph.derivatives.propagation.base import Rule
        >>> class Twice(Rule):
        ...     pass
        >>> register(Twice(), "TanhBackward0")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: TanhBackward0 already has a curvature rule (Elementwise); ...
    """
    if isinstance(rule, str):  # @register("ABackward0", ...) on a class
        all_names = (rule, *names)

        def decorate(cls: type) -> type:
            _add(cls(), all_names)
            return cls

        return decorate
    if isinstance(rule, type):
        rule = rule()
    _add(rule, names)
    return rule


def rule_for(name: str) -> Any:
    """The rule registered for grad_fn class ``name``, or None."""
    return _RULES.get(name)


def registered_names() -> list[str]:
    """Every grad_fn name that has a rule, sorted."""
    return sorted(_RULES)
