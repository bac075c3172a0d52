"""trace() against a bare iterative walk, and to_dot() against torchviz.

Run: ``make bench`` or ``.venv/bin/python benchmarks/bench_walk.py``.
"""

from __future__ import annotations

import sys

import torch
import torch.nn as nn
import torchviz
from common import best_of, machine, main_with_big_stack, table

from gradgraph import trace


def bare_walk(root) -> int:
    """Visit every node once with an explicit stack; the floor for any walker."""
    seen = set()
    stack = [root]
    while stack:
        fn = stack.pop()
        if fn in seen:
            continue
        seen.add(fn)
        for child, _ in fn.next_functions:
            if child is not None and child not in seen:
                stack.append(child)
    return len(seen)


def structure_walk(root, reads: bool = False) -> list:
    """The same walk that also numbers nodes and lists edges: structure, no facts.

    With ``reads=True`` it also makes every torch read trace() needs (see
    :func:`torch_reads`), storing nothing: the floor for any walker that gets
    its facts through torch's Python bindings.
    """
    index = {root: 0}
    stack = [root]
    edges = []
    while stack:
        fn = stack.pop()
        if reads:
            torch_reads(fn)
        u = index[fn]
        for pos, (child, _) in enumerate(fn.next_functions):
            if child is None:
                continue
            v = index.get(child)
            if v is None:
                v = index[child] = len(index)
                stack.append(child)
            edges.append((u, v, pos))
    return edges


def torch_reads(fn) -> None:
    """Read a node's output shape and dtype (``_input_metadata``, or the variable
    of an AccumulateGrad), ``_sequence_nr()``, and each ``_raw_saved_*`` value's
    ``.data`` shape, dtype and pointer."""
    if fn.__class__.__name__ == "AccumulateGrad":
        var = fn.variable
        var.shape, var.dtype, id(var)
        return
    meta = fn._input_metadata[0]
    tuple(meta.shape), meta.dtype, fn._sequence_nr()
    for attr in SAVED.get(fn.__class__) or saved_attrs(fn.__class__):
        data = getattr(fn, attr).data
        if data is not None:
            data.shape, data.dtype, data.data_ptr()


SAVED: dict = {}


def saved_attrs(cls) -> list[str]:
    SAVED[cls] = [a for a in dir(cls) if a.startswith("_raw_saved_")]
    return SAVED[cls]


def mlp_graph():
    torch.manual_seed(0)
    layers = []
    for _ in range(300):
        layers += [nn.Linear(16, 16), nn.Tanh()]
    model = nn.Sequential(*layers)
    return model(torch.randn(8, 16)).pow(2).mean(), model


def chain(n: int):
    x = torch.ones(4, requires_grad=True)
    y = x
    for i in range(n):
        y = y.sin() if i % 2 else y * 1.5
    return y


def main() -> None:
    print(f"machine: {machine()}\n")
    rows = []
    loss, model = mlp_graph()
    graphs = [
        ("MLP 300x(Linear+Tanh)", loss, model),
        ("chain 100k", chain(100_000), None),
    ]
    for name, out, mod in graphs:
        n = bare_walk(out.grad_fn)
        bare = best_of(lambda out=out: bare_walk(out.grad_fn), 7)
        shape = best_of(lambda out=out: structure_walk(out.grad_fn), 7)
        reads = best_of(lambda out=out: structure_walk(out.grad_fn, reads=True), 7)
        ours = best_of(lambda out=out, mod=mod: trace(out, model=mod), 7)
        rows.append(
            [name, n]
            + [f"{t / n * 1e6:.2f}" for t in (bare, shape, reads, ours)]
            + [f"1/{t / bare:.1f}" for t in (shape, reads, ours)]
        )
    print("trace() with all attributes and the networkx DAG vs bare walks (us/node)")
    header = ["graph", "nodes", "visit only", "visit + edges", "torch reads", "trace"]
    ratios = ["edges vs visit", "reads vs visit", "trace vs visit"]
    print(table(rows, header + ratios))

    y = chain(5_000)
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(50_000)  # torchviz recurses once per node
    try:
        theirs = best_of(lambda: torchviz.make_dot(y).source, 3)
    finally:
        sys.setrecursionlimit(old)
    ours = best_of(lambda: trace(y).to_dot(), 3)
    print("\nDOT text of a 5,000-node chain")
    print(
        table(
            [
                ["gradgraph trace().to_dot()", f"{ours * 1e3:.1f}"],
                ["torchviz make_dot().source", f"{theirs * 1e3:.1f}"],
                ["ratio (torchviz / gradgraph)", f"{theirs / ours:.2f}x"],
            ],
            ["", "ms"],
        )
    )


if __name__ == "__main__":
    main_with_big_stack(main)
