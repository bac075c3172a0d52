"""The exact Hessian diagonal by carrying curvature back through the autograd graph.

One pass from the loss to the parameters, in topological order of the traced
``grad_fn`` DAG. At every node the gradient ``g = dL/dy`` is passed on (the
node's own backward), and so are signed factor columns of the Hessian
(:mod:`.columns`): each op's rule (registered by grad_fn name, see
:mod:`.registry` and the families in :mod:`.rules`) pulls the columns back to
its inputs and adds its own second-order term as new columns. Columns of one
source that reach a node along several paths (residual connections, a
parameter used twice) are added before they are squared, so cross terms
between paths are kept: the result is the exact diagonal, equal to the dense
Hessian's, for any graph whose ops all have a rule. ``ggn=True`` keeps only
the losses' terms: the Gauss-Newton diagonal.

Columns that will meet no others of their source (an activation's own
curvature, one column per activation, as a rule) go on to the parameters
on their own, in slices of about ``CHUNK_BYTES``, before the sweep moves on:
the peak memory is a few slices, not all the columns at once.

A rule may fold the columns that end at its node into fewer
(:meth:`~.base.Rule.fold`): a language model's head that shares the
embedding's weight carries one column per entry of its input row, and their
cross term with the weight travels as partners (:class:`~.columns.Paired`)
that are paired with the columns where both reach the weight, never squared.

The cost is about that of a few backward passes per column block, with no
loop over parameters; see ``benchmarks/bench_diagonal.py``.

Example:
    >>> import torch
    >>> w = torch.tensor([1.0, 2.0], requires_grad=True)
    >>> propagated_hessian_diagonal(torch.tanh(w).sum(), w)  # -2 tanh(w) / cosh^2
    tensor([-0.6397, -0.1362])
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from contextlib import contextmanager
from typing import Any

import networkx as nx
import torch

from ...graph import trace
from ...nodes import ACCUMULATE_OP
from ..params import ParamSet, as_params, check_scalar_loss
from .base import (
    OpContext,
    UnsupportedOpError,
    call_backward,
    cast_columns,
    input_dtype,
    pull,
)
from .columns import (
    Columns,
    Paired,
    combine,
    compressed,
    concatenate,
    leaf_diagonal,
    paired_diagonal,
    storages,
)
from .registry import rule_for

__all__ = [
    "UnsupportedOpError",
    "diagonal_by_propagation",
    "diagonal_method",
    "ggn_diagonal",
    "propagated_hessian_diagonal",
    "propagation_obstacles",
    "unsupported_ops",
]


class _Plan:
    """The traced graph, its order, and which parameters each node reaches."""

    def __init__(self, loss: torch.Tensor, params: Any, allow_unused: bool = False):
        self.allow_unused = allow_unused
        check_scalar_loss(loss)
        self.loss = loss
        self.params = params if isinstance(params, ParamSet) else as_params(params)
        graph = trace(loss, keep=True)
        self.root = graph.roots[0]
        self.fns = [graph.grad_fn(i) for i in range(len(graph))]
        self.index = {fn: i for i, fn in enumerate(self.fns)}
        self.shapes = [graph.dag.nodes[i]["shape"] for i in range(len(graph))]
        self.leaf = self._param_nodes()
        self.order = list(nx.topological_sort(graph.dag))
        self.consumers = {i: list(graph.dag.predecessors(i)) for i in range(len(graph))}
        self.reach: dict[int, int] = {}  # node -> bit set of parameters below it
        for node in reversed(self.order):
            bits = self.leaf.get(node, 0)
            for child in graph.dag.successors(node):
                bits |= self.reach[child]
            self.reach[node] = bits
        self.element_size = loss.element_size()
        # per node: entries per sample of the ops after it in the sweep
        self.work_after: dict[int, int] = {}
        total = 0
        for node in reversed(self.order):
            self.work_after[node] = total
            shape = self.shapes[node]
            if self.reach[node] and node not in self.leaf and shape:
                total += math.prod(shape) // max(shape[0], 1)
        self.largest, self.samples = self._column_growth(graph)
        self.blocked: list[str] | None = None  # see propagation_plan

    def _bytes(self, node: int) -> int:
        shape = self.shapes[node]
        return (1 if shape is None else math.prod(shape)) * self.element_size

    def _column_growth(self, graph) -> tuple[dict[int, int], dict[int, int]]:
        """Per node: the bytes of the largest node at or below it, and the batch
        size when a node there mixes the samples (its columns are written out
        one per sample, so they grow that many times), else 1."""
        largest: dict[int, int] = {}
        samples: dict[int, int] = {}
        for node in reversed(self.order):
            if not self.reach[node]:
                continue
            size, n = self._bytes(node), 1
            rule = rule_for(type(self.fns[node]).__name__)
            if rule is not None and rule.mixes_samples(self.fns[node]):
                n = (self.shapes[node] or (1,))[0]
            for child in graph.dag.successors(node):
                if self.reach[child]:
                    size = max(size, largest[child])
                    n = max(n, samples[child])
            largest[node], samples[node] = size, n
        return largest, samples

    def peak_bytes(self, chunk_bytes: int) -> int:
        """About the most memory the sweep holds at once, before it runs.

        The gradient at every node, plus a few slices of columns: a slice is
        ``chunk_bytes`` or, where one column alone is larger, one column.

        Not counted yet, so the plan can be below the peak (see
        ``tests/test_propagate_plan.py``): sources whose columns stay in the
        sweep until their paths meet again (any size, several at once), per-token
        columns that go per sample at attention (``L`` times larger: the zoo
        GPT-2 on one 32-token sequence peaks at ~0.5 GiB against a 257 MiB plan),
        and the squaring temporaries at the parameters.
        """
        nodes = self.relevant()
        held = sum(self._bytes(n) for n in nodes)
        one_column = max((self.largest[n] * self.samples[n] for n in nodes), default=0)
        return held + 4 * max(chunk_bytes, one_column)

    def _param_nodes(self) -> dict[int, int]:
        """AccumulateGrad node -> the parameter's bit (1 << its position)."""
        by_tensor = {
            id(fn.variable): i
            for i, fn in enumerate(self.fns)
            if type(fn).__name__ == ACCUMULATE_OP
        }
        leaf: dict[int, int] = {}
        # a tensor listed under several names (tied weights) is one node:
        # each of its names gets the whole diagonal
        self.positions: dict[int, list[int]] = {}
        for k, (name, tensor) in enumerate(
            zip(self.params.names, self.params.tensors, strict=True)
        ):
            if not tensor.is_leaf:
                raise ValueError(
                    f"params entry {name!r} is not a leaf tensor; propagation needs "
                    "leaves (parameters); use method='exact' for intermediate values."
                )
            node = by_tensor.get(id(tensor))
            if node is None:
                if self.allow_unused:
                    continue
                raise ValueError(
                    f"the loss does not depend on {name!r}; pass allow_unused=True "
                    "to get zeros for it, or leave it out of params."
                )
            leaf[node] = leaf.get(node, 0) | (1 << k)
            self.positions.setdefault(node, []).append(k)
        return leaf

    def over_budget(self) -> str | None:
        """Why the sweep would not fit in memory (None: it would)."""
        need, budget = self.peak_bytes(DRAIN_BYTES), memory_budget()
        if need <= budget:
            return None
        return (
            f"memory: propagation needs about {need / 2**30:.1f} GiB at once, over "
            f"the budget of {budget / 2**30:.1f} GiB (one column is a whole "
            "activation per sample where BatchNorm in training mode mixes the "
            "samples): use a smaller batch, the model in eval() mode, or another "
            "method; the budget is gradgraph.derivatives.propagation.engine."
            "MEMORY_BUDGET"
        )

    def obstacles(self) -> list[str]:
        """Everything that stops propagation here: ops without a rule, memory."""
        memory = self.over_budget()
        return self.missing_rules() + ([] if memory is None else [memory])

    def relevant(self) -> list[int]:
        return [n for n in self.order if self.reach[n]]

    def missing_rules(self) -> list[str]:
        """Ops (with the reason when the op has a rule that does not cover it)."""
        missing = set()
        for node in self.relevant():
            if node in self.leaf:
                continue
            fn = self.fns[node]
            op = type(fn).__name__
            rule = rule_for(op)
            if rule is None:
                missing.add(op)
                continue
            flows, bits = [], []
            for child, out_nr in fn.next_functions:
                bits.append(0 if child is None else self.reach[self.index[child]])
                flows.append(bool(bits[-1]))
                if flows[-1] and out_nr != 0 and not _several_outputs(child):
                    missing.add(f"{type(child).__name__} (output {out_nr} of several)")
            reason = rule.refuses(fn, flows, lambda i, j, b=bits: bool(b[i] & b[j]))
            if reason is not None:
                missing.add(reason)
        return sorted(missing)


def _several_outputs(fn: Any) -> bool:
    """Does ``fn``'s rule take columns through each of its outputs (``split``)?"""
    return getattr(rule_for(type(fn).__name__), "several_outputs", False)


def unsupported_ops(loss: torch.Tensor, params: Any) -> list[str]:
    """Ops between ``loss`` and ``params`` that have no curvature rule (sorted).

    When every op has one but the sweep would need more memory than
    ``MEMORY_BUDGET``, the one entry says so (``"memory: ..."``). An empty
    list means propagation runs.

    Example:
        >>> import torch
        >>> w = torch.ones(2, requires_grad=True)
        >>> unsupported_ops(torch.atan(w).sum(), w)
        ['AtanBackward0']
    """
    return propagation_obstacles(loss, params)


def _no_rule(op: str) -> UnsupportedOpError:
    return UnsupportedOpError(
        f"{op} has no curvature rule, so the Hessian diagonal cannot be propagated "
        "through it; use hessian_diagonal(..., method='auto') to fall back to the "
        "general exact method."
    )


# The sweep does not start when its plan (_Plan.peak_bytes) needs more than
# this many bytes; None: half of the memory available when it is planned.
MEMORY_BUDGET: int | None = None


def memory_budget() -> int:
    """``MEMORY_BUDGET``, or half of the memory the system has available now."""
    if MEMORY_BUDGET is not None:
        return MEMORY_BUDGET
    try:
        with open("/proc/meminfo") as f:
            kib = next(int(s.split()[1]) for s in f if s.startswith("MemAvailable:"))
        return kib * 1024 // 2
    except (OSError, StopIteration, ValueError):  # not Linux: physical memory
        pages = os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else 0
        return max(pages * os.sysconf("SC_PAGE_SIZE") // 2, 1 << 30)


# A source's columns travel in slices of about this many bytes once they are
# on their own (see :class:`_Drain`), so memory stays bounded by a slice and not
# by the number of columns (one per activation for an activation's curvature).
CHUNK_BYTES = 8 << 20
# ... and only once they are larger than this: below it they stay in the sweep,
# where columns of several sources that never meet again are merged and
# compressed (:func:`~.columns.compressed`) into fewer
DRAIN_BYTES = 64 << 20


def _contexts(plan: _Plan) -> dict[int, tuple[OpContext, list[int | None]]]:
    """What each node's rule sees, from one backward pass for the gradients.

    Returns node -> (its OpContext, the graph node behind each input or None
    where no parameter's gradient flows). ``plan.ports`` records which output
    of a several-output child (``split``) each input is: (node, pos) -> output.
    """
    fns, index, reach = plan.fns, plan.index, plan.reach
    loss_fn = fns[plan.root]
    grads: dict[int, dict[int, torch.Tensor]] = {}  # node -> output -> dL/dy
    contexts: dict[int, tuple[OpContext, list[int | None]]] = {}
    plan.ports = {}
    plan.casts = {}  # (node, pos) -> the dtype, device the input takes
    for node in plan.relevant():
        received = grads.pop(node, {})
        if node in plan.leaf:
            continue
        fn = fns[node]
        if fn is loss_fn:
            received = {0: torch.ones_like(plan.loss)}
        if not received:  # only outputs that nothing on the way reads
            continue
        children: list[int | None] = [None] * len(fn.next_functions)
        for pos, (child_fn, out_nr) in enumerate(fn.next_functions):
            if child_fn is None or not reach[index[child_fn]]:
                continue
            children[pos] = index[child_fn]
            if _several_outputs(child_fn):
                plan.ports[node, pos] = out_nr
        # ops with several outputs (group norm's mean and rstd) take one grad each
        outputs = [received.get(k) for k in range(len(fn._input_metadata))]
        grads_in = call_backward(fn, *outputs)
        # a node whose outputs tile its input holds its columns in the input's shape
        grad = grads_in[0] if _several_outputs(fn) else received.get(0)
        if grad is None:  # only outputs other than the first are read
            continue
        in_shapes: list[tuple[int, ...] | None] = [None] * len(children)
        for pos, child in enumerate(children):
            if child is not None and grads_in[pos] is None:
                children[pos] = None  # an input this output does not depend on
            elif child is not None:
                out_nr = plan.ports.get((node, pos), 0)
                shape = plan.shapes[child]
                if (node, pos) in plan.ports:  # the trace has output 0's shape
                    shape = tuple(fns[child]._input_metadata[out_nr].shape)
                g = grads_in[pos]
                if shape is not None and tuple(g.shape) != shape:
                    g = g.sum_to_size(shape)  # what the engine does for broadcasts
                dtype, device = input_dtype(fns[child], out_nr)
                if (g.dtype, g.device) != (dtype, device):  # a promoting op
                    g = g.to(dtype=dtype, device=device)  # autograd casts it back
                    plan.casts[node, pos] = dtype, device
                in_shapes[pos] = tuple(g.shape)
                port = grads.setdefault(child, {})
                port[out_nr] = g if out_nr not in port else port[out_nr] + g
        ctx = OpContext(
            fn=fn,
            grad=grad,
            out_shape=tuple(grad.shape),
            in_shapes=in_shapes,
            coupled=lambda i, j, ch=children: bool(reach[ch[i]] & reach[ch[j]]),
            memo={},
        )
        contexts[node] = (ctx, children)
    _fuse_masks(plan, contexts)
    return contexts


def _fuse_masks(plan: _Plan, contexts: dict) -> None:
    """A node whose derivative is a 0/1 mask (``Rule.positive_mask``, a ReLU)
    read only by nodes that apply that mask themselves (``Rule.takes_input_mask``,
    a max pool): they mask their smaller columns, and the node's own pullback
    (a pass over its larger ones) is skipped.
    """
    for node, (ctx, _) in contexts.items():
        if not rule_for(ctx.op).positive_mask:
            continue
        users = [contexts.get(c, (None,))[0] for c in plan.consumers[node]]
        if users and all(
            u is not None and rule_for(u.op).takes_input_mask for u in users
        ):
            ctx.premasked = True
            for user in users:
                user.mask_input = True


def _arrive(plan: _Plan, contexts: dict, node: int, pos: int, block: Columns):
    """``block``, pulled back to input ``pos`` of ``node``, as its child holds it.

    Columns for one output of a several-output child (``split``) are put in
    place in the child's own layout; columns that cross a dtype boundary (an op
    that promoted its input) are cast to the input's dtype, as autograd casts
    the gradient; all others arrive as they are.
    """
    cast = plan.casts.get((node, pos))
    if cast is not None:
        block = cast_columns(block, contexts[node][0].in_shapes[pos], *cast)
    out_nr = plan.ports.get((node, pos))
    if out_nr is None:
        return block
    child_ctx = contexts[contexts[node][1][pos]][0]
    return rule_for(child_ctx.op).embed(child_ctx, block, out_nr)


class _Drain:
    """Carries one source's columns all the way to the parameters, a slice at a time.

    Valid for columns that meet no other columns of their source outside the
    nodes they start at: then nothing else needs to be added to them before
    they are squared, and their slices are independent.
    """

    def __init__(self, plan, contexts, diagonal, chunk_bytes: int):
        self.plan, self.contexts, self.diagonal = plan, contexts, diagonal
        self.chunk_bytes = chunk_bytes
        self.orders: dict[frozenset[int], list[int]] = {}

    def to_leaf(self, node: int, parts: list[Columns | Paired]) -> None:
        """Square the source's columns here, and pair them with its partners."""
        own = [p for p in parts if not isinstance(p, Paired)]
        if not own:  # partners alone: the columns they pair with go elsewhere
            return
        first, *others = self.plan.positions[node]
        shape = tuple(self.diagonal[first].shape)
        share = leaf_diagonal(own, shape)
        partners = [p.block for p in parts if isinstance(p, Paired)]
        if partners:
            share = share + paired_diagonal(own, partners, shape)
        for k in (first, *others):
            self.diagonal[k] += share

    def _order(self, starts: frozenset[int]) -> list[int]:
        """``starts`` and every node below them, in the propagation's order."""
        if starts not in self.orders:
            below, stack = set(starts), list(starts)
            while stack:
                node = stack.pop()
                for child in self.contexts.get(node, (None, []))[1]:
                    if child is not None and child not in below:
                        below.add(child)
                        stack.append(child)
            self.orders[starts] = [n for n in self.plan.relevant() if n in below]
        return self.orders[starts]

    def _column_bytes(self, start: dict[int, list]) -> int:
        """Bytes one column of ``start`` takes, written out one per sample where
        a node further down mixes the samples."""
        here = sum(p.column_bytes for parts in start.values() for p in parts)
        return here * max(self.plan.samples[n] for n in start)

    def worth_it(self, start: dict[int, list]) -> bool:
        """Large enough to slice (here or further down), and sliceable (every
        part has the same columns)."""
        counts = {p.count for parts in start.values() for p in parts}
        if len(counts) != 1:
            return False
        return max(counts) * self._column_bytes(start) > DRAIN_BYTES

    def __call__(self, start: dict[int, list]) -> None:
        """Propagate the columns ``start`` holds (node -> parts) to the parameters."""
        parts = [p for ps in start.values() for p in ps]
        count = parts[0].count
        step = max(1, self.chunk_bytes // max(1, self._column_bytes(start)))
        order = self._order(frozenset(start))
        for first in range(0, count, step):
            last = min(first + step, count)
            pending = {n: [p.take(first, last) for p in ps] for n, ps in start.items()}
            for node in order:
                arrived = pending.pop(node, None)
                if arrived is None:
                    continue
                if node in self.plan.leaf:
                    self.to_leaf(node, arrived)
                    continue
                ctx, children = self.contexts[node]
                rule = rule_for(ctx.op)
                block = rule.accept(ctx, combine(arrived, ctx.out_shape))
                del arrived
                # the source's columns are all here: the rule may renumber them
                ctx.whole = not any(
                    self.plan.reach[m] & self.plan.reach[node] for m in pending
                )
                for pos, child in enumerate(children):
                    if child is not None:
                        pulled = pull(rule, ctx, block, pos)
                        pending.setdefault(child, []).append(
                            _arrive(self.plan, self.contexts, node, pos, pulled)
                        )
                del block


# The sweep stops once what it counts (columns waiting, and the node's own)
# is over 1/HELD_SHARE of the budget: the rules' temporaries come on top
# (the peak was 2.1-2.2x the count on the tiny GPT-2 with 32 to 64 tokens).
HELD_SHARE = 3


class _Held:
    """The memory the columns waiting in the sweep hold, against the budget.

    The plan cannot foresee every column (a source that meets its own again
    inside attention grows about as the cube of the sequence length), so the
    sweep counts what it holds (each tensor storage once) and stops with the
    budget error when that outgrows its share of the budget (``HELD_SHARE``):
    ``hessian_diagonal`` then falls back to HVP rows, as for a plan over budget.
    """

    def __init__(self, budget: int):
        self.budget, self.total = budget, 0
        self.op = ""  # the node being worked on, and its own blocks' bytes
        self.working = 0
        self.users: dict[int, int] = {}  # storage address -> deliveries using it

    def add(self, block: Any) -> None:
        """A block delivered to a node (a block can go to two inputs)."""
        for ptr, nbytes in self._storages(block).items():
            if ptr in self.users:
                self.users[ptr] += 1
            else:
                self.users[ptr] = 1
                self.total += nbytes

    @staticmethod
    def _storages(block: Any) -> dict[int, int]:
        """``storages(block)``, kept on the block for its removal."""
        found = getattr(block, "_held", None)
        if found is None:
            found = storages(block)
            block._held = found
        return found

    def remove(self, block: Any) -> None:
        """A delivered block taken up by its node."""
        for ptr, nbytes in self._storages(block).items():
            self.users[ptr] -= 1
            if not self.users[ptr]:
                del self.users[ptr]
                self.total -= nbytes

    def at(self, op: str, blocks: Iterable = ()) -> None:
        """Working on node ``op``, whose own (combined) ``blocks`` are alive."""
        self.op, self.working = op, 0
        for block in blocks:
            self.grow(block)
        self.check()

    def grow(self, block: Any) -> None:
        """A block of the node's own (its columns, or them in another layout)."""
        self.working += sum(self._storages(block).values())
        self.check()

    def check(self) -> None:
        if (self.total + self.working) * HELD_SHARE > self.budget:
            gib = (self.total + self.working) / 2**30
            raise UnsupportedOpError(
                f"memory: propagation held {gib:.2f} GiB of columns at {self.op}; "
                f"with the temporaries of its rules (up to {HELD_SHARE}x) that is "
                f"over the budget of {self.budget / 2**30:.1f} GiB, more than its "
                "plan foresaw: use fewer tokens or a smaller batch, or another "
                "method; the budget is gradgraph.derivatives.propagation.engine."
                "MEMORY_BUDGET"
            )


def _run(plan: _Plan, ggn: bool) -> list[torch.Tensor]:
    reach = plan.reach
    blocked = plan.blocked if plan.blocked is not None else plan.obstacles()
    if blocked:  # the ops without a rule first, then the memory line
        first = blocked[0]
        raise (
            UnsupportedOpError(first)
            if first.startswith("memory:")
            else _no_rule(first)
        )
    contexts = _contexts(plan)
    pending: dict[int, dict[int, list[Columns]]] = {}
    holders: dict[int, set[int]] = {}  # source -> nodes that hold its columns
    next_source = 0
    diagonal = [torch.zeros_like(t) for t in plan.params.tensors]
    drain = _Drain(plan, contexts, diagonal, CHUNK_BYTES)
    held = _Held(memory_budget())

    def deliver(child: int, source: int, block: Columns) -> None:
        pending.setdefault(child, {}).setdefault(source, []).append(block)
        holders.setdefault(source, set()).add(child)
        held.add(block)

    def meets_again(source: int, node: int) -> bool:
        """Can this source's columns elsewhere reach a parameter ``node`` reaches?"""
        bits = 0
        for other in holders.get(source, ()):  # merged sources: none elsewhere
            bits |= reach[other]
        return bool(bits & reach[node])

    for node in plan.relevant():
        held.at(type(plan.fns[node]).__name__)
        sources = pending.pop(node, {})
        for source, parts in sources.items():
            holders[source].discard(node)
            for part in parts:
                held.remove(part)
        if node in plan.leaf:
            for parts in sources.values():
                drain.to_leaf(node, parts)
            continue
        if node not in contexts:  # no gradient reaches it: nothing to carry
            continue
        ctx, children = contexts[node]
        rule = rule_for(ctx.op)
        blocks: dict[int, Columns] = {}
        partners: dict[int, list[Columns]] = {}
        for s, parts in sources.items():
            own = [p for p in parts if not isinstance(p, Paired)]
            if own:
                blocks[s] = combine(own, ctx.out_shape)
            partners[s] = [p.block for p in parts if isinstance(p, Paired)]
        del sources
        held.at(
            ctx.op, [*blocks.values(), *(p for ps in partners.values() for p in ps)]
        )
        local = [s for s in blocks if not partners[s] and not meets_again(s, node)]
        with_residual = not ggn or rule.loss
        fold = rule.fold(ctx, [blocks[s] for s in local], with_residual)
        if fold is not None:  # the local sources (and the residual) in fewer columns
            for s in local:
                del blocks[s]
            local = []
            columns, rest = next_source, next_source + 1
            next_source += 2
            for pos, block in fold.columns.items():
                deliver(
                    children[pos], columns, _arrive(plan, contexts, node, pos, block)
                )
            for pos, block in fold.partners:
                paired = Paired(_arrive(plan, contexts, node, pos, block))
                deliver(children[pos], columns, paired)
            for pos, block in fold.rest.items():
                deliver(children[pos], rest, _arrive(plan, contexts, node, pos, block))
            with_residual = with_residual and not fold.with_residual
        work = plan.work_after[node]  # what a column costs from here
        for s in local:  # on their own: fewer columns, or in slices if large
            blocks[s] = compressed(blocks[s], work)
            if drain.worth_it({node: [blocks[s]]}):
                drain({node: [blocks.pop(s)]})
        local = [s for s in local if s in blocks]
        if len(local) > 1:  # their columns never meet again: one wider block
            for merged in concatenate([blocks.pop(s) for s in local]):
                blocks[next_source] = compressed(merged, work)
                next_source += 1
        for source in list(blocks):
            # freed once every input has its pullback
            arrived = blocks.pop(source)
            block = rule.accept(ctx, arrived)
            if block is not arrived:  # per sample: L times larger
                held.grow(block)
            del arrived
            # the source's columns are all here: the rule may renumber them
            ctx.whole = not meets_again(source, node)
            for pos, child in enumerate(children):
                if child is not None:
                    pulled = pull(rule, ctx, block, pos)
                    deliver(child, source, _arrive(plan, contexts, node, pos, pulled))
            del block
        for source, blocks_paired in partners.items():  # pulled, never squared
            ctx.whole = False
            for block in blocks_paired:
                block = rule.accept(ctx, combine([block], ctx.out_shape))
                for pos, child in enumerate(children):
                    if child is not None:
                        pulled = pull(rule, ctx, block, pos)
                        arrived = _arrive(plan, contexts, node, pos, pulled)
                        deliver(child, source, Paired(arrived))
        if with_residual:
            start: dict[int, list] = {}
            for pos, block in rule.residual(ctx).items():
                if (node, pos) in plan.ports or (node, pos) in plan.casts:
                    block = _arrive(plan, contexts, node, pos, block.written_out())
                start.setdefault(children[pos], []).append(block)
            if start and drain.worth_it(start):
                drain(start)
                continue
            for child, parts in start.items():
                for block in parts:
                    deliver(child, next_source, block.written_out())
            next_source += 1
    return diagonal


def diagonal_by_propagation(
    loss: torch.Tensor,
    ps: ParamSet,
    *,
    ggn: bool = False,
    allow_unused: bool = False,
    plan: _Plan | None = None,
) -> list[torch.Tensor]:
    """Per-parameter diagonals for a ParamSet (the ``method="propagate"`` entry).

    ``plan``: this loss's :func:`propagation_plan`, when the caller has one.
    """
    with _graph_alive():
        if plan is None:
            plan = _Plan(loss, ps, allow_unused)
        with torch.no_grad():
            return _run(plan, ggn)


def propagation_plan(loss: torch.Tensor, params: Any, allow_unused: bool = False):
    """The sweep's plan for this loss (its graph, order and memory estimate),
    with ``plan.blocked``: what stops it (:func:`propagation_obstacles`).
    Hand it to :func:`diagonal_by_propagation` to plan once."""
    with _graph_alive():
        plan = _Plan(loss, params, allow_unused)
        plan.blocked = plan.obstacles()
    return plan


@contextmanager
def _graph_alive():
    """Turn autograd's freed-buffer error into a ValueError saying what to do."""
    try:
        yield
    except RuntimeError as exc:
        if "backward through the graph a second time" not in str(exc):
            raise
        raise ValueError(
            "the loss's graph was freed by an earlier backward(); propagation reads "
            "the values it saved: recompute the loss, or call the earlier backward "
            "with retain_graph=True."
        ) from exc


def propagation_obstacles(
    loss: torch.Tensor, params: Any, allow_unused: bool = False
) -> list[str]:
    """What stops propagation for this loss: ops without a rule, or memory.

    Empty when :func:`propagated_hessian_diagonal` runs (see
    :func:`unsupported_ops`, which is this with ``allow_unused=False``).

    Example:
        >>> import torch
        >>> w = torch.ones(2, requires_grad=True)
        >>> propagation_obstacles(torch.atan(w).sum(), w)
        ['AtanBackward0']
    """
    return propagation_plan(loss, params, allow_unused).blocked


def diagonal_method(loss: torch.Tensor, params: Any, allow_unused: bool = False) -> str:
    """The route ``hessian_diagonal(..., method="exact")`` takes for this loss.

    ``"propagate"`` when every op between ``loss`` and ``params`` has a
    curvature rule and the sweep fits in ``MEMORY_BUDGET``, else ``"rows"``
    (one HVP row per entry; also for non-leaf params).

    Example:
        >>> import torch
        >>> w = torch.ones(2, requires_grad=True)
        >>> diagonal_method(torch.tanh(w).sum(), w), diagonal_method(w.atan().sum(), w)
        ('propagate', 'rows')
    """
    ps = params if isinstance(params, ParamSet) else as_params(params)
    if not all(t.is_leaf for t in ps.tensors):
        return "rows"
    obstacles = propagation_obstacles(loss, ps, allow_unused)
    return "rows" if obstacles else "propagate"


def propagated_hessian_diagonal(
    loss: torch.Tensor, params: Any, allow_unused: bool = False
) -> Any:
    """The exact diagonal of the Hessian of ``loss``, by curvature propagation.

    Args:
        loss: scalar tensor whose graph is still alive (not freed by backward).
        params: leaf tensors as an nn.Module, dict, list or one tensor.
        allow_unused: zeros for parameters the loss does not depend on.

    Returns:
        The diagonal in the form of ``params`` (dict for a Module), detached.

    Raises:
        UnsupportedOpError: an op between the loss and the parameters has no
            rule (the message names it); :func:`unsupported_ops` lists them all.

    Example:
        >>> import torch
        >>> w = torch.tensor([1.0, -2.0], requires_grad=True)
        >>> propagated_hessian_diagonal((w * w * w).sum(), w)  # 6 w
        tensor([  6., -12.])
    """
    ps = as_params(params)
    return ps.pack(diagonal_by_propagation(loss, ps, allow_unused=allow_unused))


def ggn_diagonal(loss: torch.Tensor, params: Any, allow_unused: bool = False) -> Any:
    """The diagonal of the generalised Gauss-Newton matrix ``J^T H_loss J``.

    The same propagation with only the losses' curvature (mse, huber,
    smooth-L1, log-softmax of cross-entropy); the second-order terms of the
    network's own ops are left out.

    Example:
        >>> import torch
        >>> w = torch.tensor([1.0, 2.0], requires_grad=True)
        >>> out = torch.tanh(w)
        >>> ggn_diagonal(torch.nn.functional.mse_loss(out, torch.zeros(2)), w)
        tensor([0.1764, 0.0050])
    """
    ps = as_params(params)
    return ps.pack(
        diagonal_by_propagation(loss, ps, ggn=True, allow_unused=allow_unused)
    )
