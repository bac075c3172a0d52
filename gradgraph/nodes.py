"""What one grad_fn node is, as plain data.

`node_facts(fn)` turns a live autograd node into a small dict of strings, ints
and shape tuples. Facts that depend only on the node's class (op name, kind,
which ``_raw_saved_*`` attributes it has) are computed once per class and
cached; repeated shape tuples and dtype names are shared, so a million-node
graph keeps one copy of each distinct shape.

Example:
    >>> import torch
    >>> x = torch.ones(2, 3, requires_grad=True)
    >>> facts = node_facts((x * 2).sum().grad_fn)
    >>> facts["op"], facts["kind"], facts["shape"]
    ('SumBackward0', 'op', ())
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

ACCUMULATE = "accumulate"
OP = "op"
ROOT = "root"

ACCUMULATE_OP = "AccumulateGrad"
SAVED_PREFIX = "_raw_saved_"


@dataclass(frozen=True)
class OpClassFacts:
    """Facts shared by every node of one grad_fn class."""

    op: str
    is_accumulate: bool
    saved_attrs: tuple[str, ...]  # full attribute names, e.g. "_raw_saved_mat1"


_CLASS_FACTS: dict[type, OpClassFacts] = {}
_SHAPES: dict[tuple[int, ...], tuple[int, ...]] = {}
_DTYPES: dict[torch.dtype, str] = {}
_FACTS: dict[tuple, dict] = {}  # saved-tensor facts, shared (see _tensor_fact)


def class_facts(cls: type) -> OpClassFacts:
    """Per-class facts, computed once per grad_fn class and cached."""
    facts = _CLASS_FACTS.get(cls)
    if facts is None:
        op = cls.__name__
        saved = tuple(sorted(a for a in dir(cls) if a.startswith(SAVED_PREFIX)))
        facts = OpClassFacts(op, op == ACCUMULATE_OP, saved)
        _CLASS_FACTS[cls] = facts
    return facts


def shared_shape(shape: Any) -> tuple[int, ...]:
    """The one shared tuple for this shape (lists and torch.Size accepted)."""
    key = tuple(shape)
    return _SHAPES.setdefault(key, key)


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float32`` -> ``"float32"``, cached."""
    name = _DTYPES.get(dtype)
    if name is None:
        name = _DTYPES[dtype] = str(dtype).removeprefix("torch.")
    return name


def _tensor_fact(attr: str, tensor: torch.Tensor | None, owners: dict) -> dict:
    """One saved tensor as plain data; ``tensor is None`` means freed.

    Equal facts are one shared dict (treat them as read-only): a graph saves the
    same attr/shape/dtype over and over, and a dict costs ~180 bytes.
    """
    if tensor is None:
        key: tuple = (attr,)
    else:
        owner = None
        if owners and tensor.layout is torch.strided:
            owner = owners.get((tensor.data_ptr(), tensor.numel()))
        key = (attr, tensor.shape, tensor.dtype, owner)
    fact = _FACTS.get(key)
    if fact is None:
        fact = _FACTS[key] = _new_fact(attr, tensor, key)
    return fact


def _new_fact(attr: str, tensor: torch.Tensor | None, key: tuple) -> dict:
    if tensor is None:
        return {"attr": attr, "freed": True}
    fact = {
        "attr": attr,
        "shape": shared_shape(tensor.shape),
        "dtype": dtype_name(tensor.dtype),
        "nbytes": tensor.numel() * tensor.element_size(),
        "freed": False,
    }
    if key[-1] is not None:
        fact["of"] = key[-1]
    return fact


def _freed(fn: Any, full: str) -> bool:
    """Whether an attribute whose ``.data`` is None was freed (else: never saved).

    ``_saved_<attr>`` returns None for a value the op did not need to save, and
    raises once backward has released a value it did save.
    """
    try:
        getattr(fn, "_saved_" + full[len(SAVED_PREFIX) :])
    except RuntimeError:
        return True
    return False


def saved_facts(
    fn: Any, attrs: tuple[str, ...], owners: dict | None
) -> tuple[dict, ...]:
    """Facts about every tensor ``fn`` saved for backward.

    Uses ``_raw_saved_*`` (whose ``.data`` is None once backward freed it), so it
    never raises on a freed graph and never calls saved-tensor unpack hooks (a
    value packed by ``saved_tensors_hooks`` is reported as ``packed``: the type
    of what the pack hook returned); values the op did not need (undefined) are
    left out. After backward a custom Function gives one freed ``tensors`` entry
    (torch no longer tells how many tensors it saved, or whether any).
    ``owners`` maps (data_ptr, numel) of named tensors to their names, so a
    saved weight says which parameter it is.
    """
    facts = []
    for full in attrs:
        attr = full[len(SAVED_PREFIX) :]
        try:
            raw = getattr(fn, full)
        except RuntimeError:  # a custom Function's tensors, after backward
            facts.append({"attr": attr, "freed": True})
            continue
        items = raw if isinstance(raw, (list, tuple)) else (raw,)
        freed = None
        for i, item in enumerate(items):
            data = item.data
            if data is None:
                if freed is None:
                    freed = _freed(fn, full)
                if not freed:
                    continue
            name = attr if raw is item else f"{attr}[{i}]"
            if data is None or isinstance(data, torch.Tensor):
                facts.append(_tensor_fact(name, data, owners))
            else:  # packed by saved_tensors_hooks: never unpack (no side effects)
                packed = type(data).__name__
                facts.append({"attr": name, "freed": False, "packed": packed})
    return tuple(facts)


def output_metadata(fn: Any) -> tuple[tuple[tuple[int, ...], ...], str | None]:
    """Shapes of the values this node produces, and the dtype of the first.

    For AccumulateGrad this is the leaf variable; for any other node it is the
    forward op's outputs, read from ``_input_metadata`` (which survives backward).
    """
    try:
        metas = fn._input_metadata
    except (AttributeError, RuntimeError):  # Python-defined nodes may lack it
        return (), None
    if not metas:
        return (), None
    shapes = tuple([_SHAPES.setdefault(s, s) for s in (tuple(m.shape) for m in metas)])
    dtype = metas[0].dtype
    name = _DTYPES.get(dtype)
    return shapes, name if name is not None else dtype_name(dtype)


def node_facts(fn: Any, owners: dict | None = None) -> dict:
    """The attribute dict gradgraph stores for one grad_fn node.

    Keys: ``op``, ``kind``, ``label``, ``name`` (None until naming fills it),
    ``shape``, ``dtype``, ``seq_nr`` (None for AccumulateGrad, whose sequence
    number is the 2**64-1 sentinel), ``saved`` (tuple of dicts) and ``order``
    (derivative order; None until expansion fills it). A node whose forward op
    has several outputs also has ``shapes``. This runs once per node of every
    trace, so it is written for speed: per-class facts come from a cache.
    """
    cls = type(fn)
    facts = _CLASS_FACTS.get(cls) or class_facts(cls)
    shapes, dtype = output_metadata(fn)
    attrs = {
        "op": facts.op,
        "kind": ACCUMULATE if facts.is_accumulate else OP,
        "label": facts.op,
        "name": None,
        "shape": shapes[0] if shapes else None,
        "dtype": dtype,
        "seq_nr": None if facts.is_accumulate else fn._sequence_nr(),
        "saved": saved_facts(fn, facts.saved_attrs, owners)
        if facts.saved_attrs
        else (),
        "order": None,
    }
    if len(shapes) > 1:
        attrs["shapes"] = shapes
    return attrs
