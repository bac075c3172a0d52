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

# Node kinds (``data["kind"]``), one set used everywhere: what trace() gives ...
ACCUMULATE = "accumulate"  # AccumulateGrad: a leaf tensor
OP = "op"  # any other backward function
ROOT = "root"  # the grad_fn of a traced output
# ... and the boxes a folded graph (gradgraph.render.collapse) draws instead
CHAIN = "chain"  # a run of nodes with one input and one output each
MODULE = "module"  # the nodes of one nn.Module call
MORE = "more"  # the nodes left over once a node budget is spent
NODE_KINDS = (ACCUMULATE, OP, ROOT, CHAIN, MODULE, MORE)

ACCUMULATE_OP = "AccumulateGrad"
SAVED_PREFIX = "_raw_saved_"


@dataclass(frozen=True)
class OpClassFacts:
    """Facts shared by every node of one grad_fn class."""

    op: str
    is_accumulate: bool
    # (short name, attribute) pairs, e.g. ("mat1", "_raw_saved_mat1")
    saved_attrs: tuple[tuple[str, str], ...]


_CLASS_FACTS: dict[type, OpClassFacts] = {}
_SHAPES: dict[tuple[int, ...], tuple[int, ...]] = {}
_DTYPES: dict[torch.dtype, str] = {}
_FACTS: dict[tuple, dict] = {}  # saved-tensor facts, shared (see _tensor_fact)


def class_facts(cls: type) -> OpClassFacts:
    """Per-class facts, computed once per grad_fn class and cached."""
    facts = _CLASS_FACTS.get(cls)
    if facts is None:
        op = cls.__name__
        saved = tuple(
            (a[len(SAVED_PREFIX) :], a)
            for a in sorted(dir(cls))
            if a.startswith(SAVED_PREFIX)
        )
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


def _tensor_fact(attr: str, tensor: Any, owners: dict | None) -> dict:
    """One saved value as plain data; ``tensor is None`` means freed.

    A value that is not a tensor was packed by ``saved_tensors_hooks``: it is
    reported as ``packed`` (the type the pack hook returned), never unpacked.
    Equal facts of strided tensors are one shared dict (treat them as read-only):
    a graph saves the same attr/shape/dtype over and over, and a dict costs ~180
    bytes. ``owners`` is :meth:`gradgraph.naming.Names.storage_owners`.
    """
    if tensor is None:
        key: tuple = (attr,)
    elif not isinstance(tensor, torch.Tensor):
        return _packed_fact(attr, tensor)
    elif tensor.layout is torch.strided:
        owner = None
        if owners:
            sizes = owners.get(tensor.data_ptr())
            if sizes is not None:
                owner = sizes.get(tensor.numel())
        key = (attr, tensor.shape, tensor.dtype, owner)
    else:  # sparse and other layouts: nbytes is not a function of the shape
        return _new_fact(attr, tensor, None)
    fact = _FACTS.get(key)
    if fact is None:
        fact = _FACTS[key] = _new_fact(attr, tensor, key[-1])
    return fact


def _packed_fact(attr: str, packed: Any) -> dict:
    """A value packed by ``saved_tensors_hooks``, with every key a fact has.

    The tensors the packed value holds (itself, or the items of a tuple/list,
    as ``save_on_cpu`` packs ``(device, cpu_tensor)``) give its shape, dtype
    and ``nbytes``: the bytes the graph really holds. A packed value holding
    no tensor (non-reentrant ``checkpoint``'s recompute holder, a user's key
    into its own storage) holds no tensor memory: shape and dtype ``None``,
    ``nbytes`` 0. Never unpacked.
    """
    items = packed if isinstance(packed, (tuple, list)) else (packed,)
    held = [t for t in items if isinstance(t, torch.Tensor)]
    fact = {
        "attr": attr,
        "shape": tuple(held[0].shape) if held else None,
        "dtype": dtype_name(held[0].dtype) if held else None,
        "nbytes": sum(t.numel() * t.element_size() for t in held),
        "freed": False,
        "packed": type(packed).__name__,
    }
    return fact


def _new_fact(attr: str, tensor: torch.Tensor | None, owner: str | None) -> dict:
    if tensor is None:
        return {"attr": attr, "shape": None, "dtype": None, "nbytes": 0, "freed": True}
    shape = tuple(tensor.shape)
    dtype = tensor.dtype
    fact = {
        "attr": attr,
        "shape": _SHAPES.setdefault(shape, shape),
        "dtype": _DTYPES.get(dtype) or dtype_name(dtype),
        "nbytes": tensor.nbytes  # raises for sparse: count those as dense
        if tensor.layout is torch.strided
        else tensor.numel() * tensor.element_size(),
        "freed": False,
    }
    if owner is not None:
        fact["of"] = owner
    return fact


def _freed(fn: Any, attr: str) -> bool:
    """Whether an attribute whose ``.data`` is None was freed (else: never saved).

    ``_saved_<attr>`` returns None for a value the op did not need to save, and
    raises once backward has released a value it did save.
    """
    try:
        getattr(fn, "_saved_" + attr)
    except RuntimeError:
        return True
    return False


def saved_facts(
    fn: Any,
    attrs: tuple[tuple[str, str], ...],
    owners: dict | None,
    storages: list | None = None,
) -> tuple[dict, ...]:
    """Facts about every tensor ``fn`` saved for backward.

    Uses ``_raw_saved_*`` (whose ``.data`` is None once backward freed it), so it
    never raises on a freed graph and never calls saved-tensor unpack hooks (a
    value packed by ``saved_tensors_hooks`` is reported as ``packed``: the type
    of what the pack hook returned); values the op did not need (undefined) are
    left out. After backward a custom Function gives one freed ``tensors`` entry
    (torch no longer tells how many tensors it saved, or whether any).
    ``owners`` (from :meth:`gradgraph.naming.Names.storage_owners`) finds the
    name of a saved named tensor or view of one, so a saved weight says which
    parameter it is. ``storages``, when given, gets the storage of every live
    strided saved value (see :func:`storage_key`).
    """
    facts = []
    live = False  # whether any value is still held: then the node was not released
    missing = []  # (position, label, attr) of values whose .data is None
    for attr, full in attrs:
        try:
            raw = getattr(fn, full)
        except RuntimeError:  # a custom Function's tensors, after backward
            facts.append(_new_fact(attr, None, None))
            continue
        if raw.__class__ is list or raw.__class__ is tuple:  # a saved list
            items = [(f"{attr}[{i}]", item.data) for i, item in enumerate(raw)]
        else:
            items = ((attr, raw.data),)
        for label, data in items:
            if data is None:
                missing.append((len(facts), label, attr))
            else:
                live = True
                facts.append(_tensor_fact(label, data, owners))
                if (
                    storages is not None
                    and isinstance(data, torch.Tensor)
                    and data.layout is torch.strided
                ):
                    storages.append(storage_key(data))
    # backward releases all of a node's values at once: if one is still held,
    # the missing ones were never saved; else ask each (a never-saved value
    # reads as None, a released one raises)
    if missing and not live:
        freed = {attr: _freed(fn, attr) for _, _, attr in missing}
        shift = 0
        for position, label, attr in missing:
            if freed[attr]:
                facts.insert(position + shift, _tensor_fact(label, None, owners))
                shift += 1
    return tuple(facts)


def storage_key(tensor: torch.Tensor) -> tuple[int, int]:
    """(address, bytes) of the storage behind ``tensor``: what keeping it alive
    keeps in memory (a view keeps its whole base)."""
    storage = tensor.untyped_storage()
    return storage.data_ptr(), storage.nbytes()


def _storage_ids(keys: list, storages: dict) -> tuple[tuple[int, int], ...]:
    """(storage id, bytes) pairs; ids count storages in order of discovery."""
    return tuple(
        (storages.setdefault(ptr, len(storages)), nbytes) for ptr, nbytes in keys
    )


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
    shapes = tuple([shared_shape(m.shape) for m in metas])
    return shapes, dtype_name(metas[0].dtype)


def node_facts(
    fn: Any,
    owners: dict | None = None,
    names: dict | None = None,
    storages: dict | None = None,
) -> dict:
    """The attribute dict gradgraph stores for one grad_fn node.

    Keys: ``op``, ``kind``, ``label``, ``name``, ``shape``, ``dtype``,
    ``seq_nr`` (None for AccumulateGrad, whose sequence number is the 2**64-1
    sentinel), ``saved`` (tuple of dicts) and ``order`` (derivative order; None
    until expansion fills it). A node whose forward op has several outputs also
    has ``shapes``. ``names`` maps ``id(tensor)`` to a name: an AccumulateGrad
    node of a named variable gets it as ``name`` and ``label``; other names are
    filled in by :func:`gradgraph.trace`. With ``storages`` (a dict the trace
    shares between nodes: storage address -> small id), a node that holds saved
    values also gets ``storages``, ``(id, bytes)`` per saved value, and an
    AccumulateGrad node gets its variable's ``storage`` id.

    This runs once per node of every trace, so it is written for speed: per-class
    facts come from a cache, the common one-output case is inlined, and an
    AccumulateGrad node reads its variable (cheaper than ``_input_metadata``).
    """
    cls = fn.__class__
    facts = _CLASS_FACTS.get(cls) or class_facts(cls)
    if facts.is_accumulate:
        attrs = _accumulate_facts(fn, facts.op, names)
        if storages is not None and fn.variable.layout is torch.strided:
            attrs["storage"] = _storage_ids([storage_key(fn.variable)], storages)[0][0]
        return attrs
    try:
        metas = fn._input_metadata
    except (AttributeError, RuntimeError):  # Python-defined nodes may lack it
        metas = ()
    if len(metas) == 1:
        meta = metas[0]
        shape = tuple(meta.shape)
        shape = _SHAPES.setdefault(shape, shape)
        dtype = meta.dtype
        dtype = _DTYPES.get(dtype) or dtype_name(dtype)
        shapes = None
    else:
        shapes, dtype = output_metadata(fn)
        shape = shapes[0] if shapes else None
    keys = [] if storages is not None and facts.saved_attrs else None
    attrs = {
        "op": facts.op,
        "kind": OP,
        "label": facts.op,
        "name": None,
        "shape": shape,
        "dtype": dtype,
        "seq_nr": fn._sequence_nr(),
        "saved": saved_facts(fn, facts.saved_attrs, owners, keys)
        if facts.saved_attrs
        else (),
        "order": None,
    }
    if keys:
        attrs["storages"] = _storage_ids(keys, storages)
    if shapes is not None and len(shapes) > 1:
        attrs["shapes"] = shapes
    return attrs


def _accumulate_facts(fn: Any, op: str, names: dict | None) -> dict:
    """:func:`node_facts` of an AccumulateGrad node: its variable's facts."""
    var = fn.variable
    try:
        shape = var.shape
    except RuntimeError:  # nested tensors have no single shape
        shapes, dtype = output_metadata(fn)
        shape = shapes[0] if shapes else None
    else:
        shape = _SHAPES.get(shape) or shared_shape(shape)
        dtype = var.dtype
        dtype = _DTYPES.get(dtype) or dtype_name(dtype)
    name = names.get(id(var)) if names else None
    return {
        "op": op,
        "kind": ACCUMULATE,
        "label": name or op,
        "name": name,
        "shape": shape,
        "dtype": dtype,
        "seq_nr": None,
        "saved": (),
        "order": None,
    }
