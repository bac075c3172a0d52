"""Which module's forward created each autograd node: ``record_modules(model)``.

Inside ``with record_modules(model) as rec:`` every submodule carries a forward
pre-hook and a forward hook. The pre-hook notes torch's autograd sequence
number at the start of the call (by creating one tiny probe node); the hook
walks back from the call's outputs over the nodes created since then and
gives each node not yet claimed the module's dotted name. Inner modules
finish first, so a node belongs to the innermost module that created it.
Nodes are remembered by ``(id(node), sequence number)`` (no tensors or
grad_fn objects are kept; sequence numbers alone repeat between the forward
and a ``create_graph`` backward, ids alone could be reused), and every hook is
removed when the block ends, also on error.

``trace(..., modules=rec)`` then sets the ``module`` attribute of the nodes it
finds (``"encoder.layer.3"``), which the renderers draw as nested clusters and
``collapse="modules"`` folds.

Example:
    >>> import torch
    >>> from gradgraph import trace
    >>> model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Tanh())
    >>> with record_modules(model) as rec:
    ...     out = model(torch.ones(1, 2)).sum()
    >>> g = trace(out, model=model, modules=rec)
    >>> sorted({m for _, m in g.dag.nodes(data="module") if m})
    ['0', '1']
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

_NO_SEQ = 2**64 - 1  # AccumulateGrad's sequence number


class ModuleRecord:
    """(node id, sequence number) -> module name, filled by :func:`record_modules`."""

    def __init__(self) -> None:
        self.module_of: dict[tuple[int, int], str] = {}
        self._starts: list[int] = []
        self._probe = torch.zeros((), requires_grad=True)

    def _now(self) -> int:
        with torch.enable_grad():
            return self._probe.view(()).grad_fn._sequence_nr()

    def before(self, module: torch.nn.Module, args: Any) -> None:
        self._starts.append(self._now())

    def after(self, name: str, outputs: Any) -> None:
        start = self._starts.pop()
        claimed = self.module_of
        stack = [t.grad_fn for t in _tensors(outputs) if t.grad_fn is not None]
        seen: set = set()
        while stack:
            fn = stack.pop()
            if fn in seen:
                continue
            seen.add(fn)
            seq = fn._sequence_nr()
            if seq <= start or seq == _NO_SEQ:
                continue
            claimed.setdefault((id(fn), seq), name)
            stack.extend(c for c, _ in fn.next_functions if c is not None)

    def module(self, fn: Any) -> str | None:
        """The module whose forward created the autograd node ``fn``, if known."""
        if not self.module_of:
            return None
        return self.module_of.get((id(fn), fn._sequence_nr()))


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, torch.Tensor):
            yield item
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.values())


@contextmanager
def record_modules(model: torch.nn.Module) -> Iterator[ModuleRecord]:
    """Record which submodule of ``model`` created each autograd node.

    Every hook is removed when the block ends, even when it raises. The model
    itself (name ``""``) is not recorded: its own ops stay without a module.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(
            f"record_modules() takes an nn.Module, got {type(model).__name__}."
        )
    if isinstance(getattr(model, "_orig_mod", None), torch.nn.Module):
        raise ValueError(
            "record_modules() cannot see inside a torch.compile'd model: compiled "
            "code runs no module hooks, so nothing would be recorded. Record and "
            "run the original module instead: model._orig_mod."
        )
    record = ModuleRecord()
    handles = []
    try:
        for name, module in model.named_modules():
            if not name:
                continue
            handles.append(module.register_forward_pre_hook(record.before))
            handles.append(
                module.register_forward_hook(
                    lambda _m, _a, out, name=name: record.after(name, out)
                )
            )
        yield record
    finally:
        for handle in handles:
            handle.remove()
